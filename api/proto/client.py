#!/usr/bin/env python3
"""The seed's gRPC queue client commands against any chorus node.

    python3 api/proto/client.py add --id 123 --title "Song Title" --artist "Artist Name" --duration 200
    python3 api/proto/client.py play | history | queue
    python3 api/proto/client.py metadata --id 123
    python3 api/proto/client.py vote --id 123 --up true|false
    python3 api/proto/client.py remove --id 123

The commands and flags are the seed's (microservices-grpc/queue-service/client.py). The node is
`--target host:port` or `$QUEUE_GRPC_TARGET` (default 127.0.0.1:50051, node 1 of the shipped
cluster.toml); `--token` or `$CHORUS_TOKEN` sends a login token, so a vote is the user's one vote.
Needs `pip install grpcio grpcio-tools`; the stubs are generated from queue.proto on first use if
`queue_pb2.py` is not importable.
"""

import argparse
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def load_stubs():
    """queue_pb2 and queue_pb2_grpc, generated from queue.proto beside this file if needed."""
    try:
        import queue_pb2
        import queue_pb2_grpc
        return queue_pb2, queue_pb2_grpc
    except ImportError:
        pass
    from grpc_tools import protoc

    out = os.path.join(tempfile.gettempdir(), "chorus-queue-stubs")
    os.makedirs(out, exist_ok=True)
    code = protoc.main(["protoc", f"-I{HERE}", f"--python_out={out}",
                        f"--grpc_python_out={out}", os.path.join(HERE, "queue.proto")])
    if code != 0:
        sys.exit(f"cannot generate the gRPC stubs from {HERE}/queue.proto (protoc exit {code})")
    sys.path.insert(0, out)
    import queue_pb2
    import queue_pb2_grpc
    return queue_pb2, queue_pb2_grpc


def parse_up(text):
    value = text.strip().lower()
    if value in ("true", "1", "yes", "y"):
        return True
    if value in ("false", "0", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"--up must be true or false, not {text!r}")


def main():
    parser = argparse.ArgumentParser(description="gRPC music queue client (chorus)")
    parser.add_argument("--target", default=os.environ.get("QUEUE_GRPC_TARGET", "127.0.0.1:50051"),
                        help="a node's grpc_addr (default: $QUEUE_GRPC_TARGET or 127.0.0.1:50051)")
    parser.add_argument("--token", default=os.environ.get("CHORUS_TOKEN"),
                        help="a login token (POST /users/login): votes become one per user")
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="Add a track")
    add.add_argument("--id", required=True)
    add.add_argument("--title", required=True)
    add.add_argument("--artist", required=True)
    add.add_argument("--duration", type=int, required=True)
    commands.add_parser("play", help="Play next track")
    commands.add_parser("history", help="Show play history")
    commands.add_parser("queue", help="Show current queue")
    metadata = commands.add_parser("metadata", help="Get track metadata")
    metadata.add_argument("--id", required=True)
    vote = commands.add_parser("vote", help="Vote for a track")
    vote.add_argument("--id", required=True)
    vote.add_argument("--up", required=True, type=parse_up, help="true for upvote, false for downvote")
    remove = commands.add_parser("remove", help="Remove a track")
    remove.add_argument("--id", required=True)
    args = parser.parse_args()

    import grpc
    pb, pb_grpc = load_stubs()
    metadata = [("authorization", f"Bearer {args.token}")] if args.token else []
    with grpc.insecure_channel(args.target) as channel:
        stub = pb_grpc.QueueServiceStub(channel)
        call = {
            "add": lambda: ("AddTrack response:", stub.AddTrack(
                pb.Track(id=args.id, title=args.title, artist=args.artist, duration=args.duration),
                metadata=metadata)),
            "play": lambda: ("PlayNext response:", stub.PlayNext(pb.Empty(), metadata=metadata)),
            "history": lambda: ("History:", stub.GetHistory(pb.Empty(), metadata=metadata)),
            "queue": lambda: ("Current Queue:", stub.GetQueue(pb.Empty(), metadata=metadata)),
            "metadata": lambda: ("Track Metadata:", stub.GetMetadata(pb.TrackId(id=args.id), metadata=metadata)),
            "vote": lambda: ("VoteTrack response:", stub.VoteTrack(
                pb.VoteRequest(id=args.id, up=args.up), metadata=metadata)),
            "remove": lambda: ("RemoveTrack response:", stub.RemoveTrack(pb.TrackId(id=args.id), metadata=metadata)),
        }[args.command]
        try:
            title, answer = call()
        except grpc.RpcError as e:
            sys.exit(f"{e.code().name}: {e.details()}")
        print(title)
        if args.command in ("history", "queue"):
            for track in answer.queue:
                print(track)
        else:
            print(answer)


if __name__ == "__main__":
    main()
