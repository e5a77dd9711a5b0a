#!/usr/bin/env python3
"""The checks of the seed's gRPC test suite (test_add_remove, test_vote, test_sync,
test_metadata, test_history), against two chorus nodes:

    python3 api/proto/seed_tests.py NODE1_GRPC_ADDR NODE2_GRPC_ADDR

Prints one PASS line per test and `ALL TESTS PASSED`, or exits non-zero. The seed's history test
emptied Redis first; here the queue is played until the test's own track comes up instead.
"""

import sys

import grpc

from client import load_stubs

pb, pb_grpc = load_stubs()


def test_add_remove(stub, _other):
    resp = stub.AddTrack(pb.Track(id="101", title="TestAdd", artist="Tester", votes=0))
    assert any(t.id == "101" for t in resp.queue), "Track not added"
    resp = stub.RemoveTrack(pb.TrackId(id="101"))
    assert all(t.id != "101" for t in resp.queue), "Track not removed"


def test_vote(stub, _other):
    stub.AddTrack(pb.Track(id="102", title="VoteSong", artist="Voter", votes=0))
    resp = stub.VoteTrack(pb.VoteRequest(id="102", up=True))
    assert any(t.id == "102" and t.votes == 1 for t in resp.queue), "Upvote failed"
    resp = stub.VoteTrack(pb.VoteRequest(id="102", up=False))
    assert any(t.id == "102" and t.votes == 0 for t in resp.queue), "Downvote failed"


def test_sync(stub, other):
    stub.AddTrack(pb.Track(id="103", title="SyncSong", artist="Syncer", votes=0))
    queue = other.GetQueue(pb.Empty())
    assert any(t.id == "103" for t in queue.queue), "Track not synced to node2"


def test_metadata(stub, _other):
    stub.AddTrack(pb.Track(id="104", title="MetaSong", artist="Meta", votes=0, duration=321))
    meta = stub.GetMetadata(pb.TrackId(id="104"))
    assert meta.id == "104" and meta.title == "MetaSong" and meta.duration == 321, "Metadata incorrect"


def test_history(stub, _other):
    stub.AddTrack(pb.Track(id="105", title="HistSong", artist="Hist", votes=0))
    while stub.PlayNext(pb.Empty()).id != "105":
        pass
    history = stub.GetHistory(pb.Empty())
    assert any(t.id == "105" for t in history.queue), "Track not in history"


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with grpc.insecure_channel(sys.argv[1]) as first, grpc.insecure_channel(sys.argv[2]) as second:
        stub, other = pb_grpc.QueueServiceStub(first), pb_grpc.QueueServiceStub(second)
        failed = False
        for test in (test_add_remove, test_vote, test_sync, test_metadata, test_history):
            try:
                test(stub, other)
                print(f"{test.__name__}: PASS")
            except (AssertionError, grpc.RpcError) as e:
                print(f"{test.__name__}: FAIL ({e})")
                failed = True
    if failed:
        sys.exit("SOME TESTS FAILED")
    print("ALL TESTS PASSED")


if __name__ == "__main__":
    main()
