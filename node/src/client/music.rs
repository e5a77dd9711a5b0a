//! The music commands of `chorus client`: accounts, uploads with a progress bar, the library,
//! downloads and the playlist. A failure is one line that says why (the node's own message), and
//! the exit status is non-zero.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Subcommand, ValueEnum};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use super::session::{Session, token_user_id};
use super::{expect_ok, failure, unreachable};

#[derive(Subcommand)]
pub enum MusicCmd {
    /// Create an account (then `login`).
    Register {
        #[arg(long)]
        username: Option<String>,
        #[arg(long)]
        email: Option<String>,
        /// Asked for when missing (or set CHORUS_PASSWORD).
        #[arg(long, env = "CHORUS_PASSWORD", hide_env_values = true)]
        password: Option<String>,
    },
    /// Log in and keep the token for the other commands (never printed).
    Login {
        #[arg(long)]
        username: Option<String>,
        /// Asked for when missing (or set CHORUS_PASSWORD).
        #[arg(long, env = "CHORUS_PASSWORD", hide_env_values = true)]
        password: Option<String>,
    },
    /// Forget the stored login.
    Logout,
    /// Who the stored login is for.
    Whoami,
    /// Upload MP3 files; prints each new track id. Missing metadata comes from the ID3 tags.
    Upload {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Title for every file given (usually for one file without tags).
        #[arg(long)]
        title: Option<String>,
        #[arg(long)]
        artist: Option<String>,
        #[arg(long)]
        album: Option<String>,
        #[arg(long)]
        genre: Option<String>,
    },
    /// List the library, or search it.
    Tracks {
        /// Text to find in the title, artist or album.
        #[arg(long)]
        search: Option<String>,
        /// At most this many tracks (the node allows up to 1000).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print the node's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Save a track's MP3 to a file.
    Download {
        id: u64,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Your playlist: show it, or add or remove a track.
    Playlist {
        #[arg(value_enum, default_value_t = PlaylistAction::Show)]
        action: PlaylistAction,
        /// The track id (for add and remove).
        id: Option<u64>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum PlaylistAction {
    Show,
    Add,
    Remove,
}

impl MusicCmd {
    /// Commands that choose their node themselves rather than use the stored login's.
    pub fn is_login(&self) -> bool {
        matches!(self, MusicCmd::Register { .. } | MusicCmd::Login { .. })
    }
}

pub async fn run(base: &str, cmd: &MusicCmd) -> anyhow::Result<()> {
    // Requests that move no audio answer within the cluster's own bound (5 s by default).
    let http = super::http_client(Some(Duration::from_secs(30)))?;
    match cmd {
        MusicCmd::Register {
            username,
            email,
            password,
        } => {
            let username = ask_or(username, "username")?;
            let email = ask_or(email, "email")?;
            let password = password_or_prompt(password)?;
            let body = json!({"username": username, "email": email, "password": password});
            let answer = expect_ok(http.post(format!("{base}/users/register")).json(&body)).await?;
            let id = answer["user_id"].as_str().unwrap_or("?");
            println!(
                "registered {username} (user {id}); now run `chorus client login --username {username}`"
            );
        }
        MusicCmd::Login { username, password } => {
            let username = ask_or(username, "username")?;
            let password = password_or_prompt(password)?;
            let body = json!({"username": username, "password": password});
            let answer = expect_ok(http.post(format!("{base}/users/login")).json(&body)).await?;
            let token = answer["token"]
                .as_str()
                .context("the node answered the login without a token")?
                .to_string();
            let session = Session {
                node: base.to_string(),
                user_id: token_user_id(&token)?,
                username: username.clone(),
                token,
            };
            let path = session.save()?;
            println!(
                "logged in as {username} (user {}) on {base}; the token is in {}",
                session.user_id,
                path.display()
            );
        }
        MusicCmd::Logout => {
            if Session::remove()? {
                println!("logged out");
            } else {
                println!("not logged in");
            }
        }
        MusicCmd::Whoami => {
            let s = Session::required()?;
            println!("{} (user {}) on {}", s.username, s.user_id, s.node);
        }
        MusicCmd::Upload {
            files,
            title,
            artist,
            album,
            genre,
        } => {
            let session = Session::required()?;
            // Uploads stream for as long as they take: no overall timeout.
            let http = super::http_client(None)?;
            let metadata =
                json!({"title": title, "artist": artist, "album": album, "genre": genre});
            let mut failed = 0;
            for file in files {
                match upload(&http, base, &session, file, &metadata).await {
                    Ok(id) => println!("{}: track {id}", file.display()),
                    Err(e) => {
                        eprintln!("{}: {e:#}", file.display());
                        failed += 1;
                    }
                }
            }
            if failed > 0 {
                bail!("{failed} of {} uploads failed", files.len());
            }
        }
        MusicCmd::Tracks {
            search,
            limit,
            json,
        } => {
            let mut query = vec![("limit", limit.to_string())];
            if let Some(q) = search {
                query.push(("q", q.clone()));
            }
            let answer = expect_ok(http.get(format!("{base}/tracks")).query(&query)).await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
            } else {
                print_tracks(answer.as_array().map(Vec::as_slice).unwrap_or_default());
            }
        }
        MusicCmd::Download { id, output } => {
            let http = super::http_client(None)?;
            let bytes = download(&http, base, *id, output).await?;
            println!("track {id}: {bytes} bytes saved to {}", output.display());
        }
        MusicCmd::Playlist { action, id } => {
            let session = Session::required()?;
            let user = session.user_id.to_string();
            let need_id = || id.context("give the track id: `chorus client playlist add 12`");
            match action {
                PlaylistAction::Show => {
                    let answer = expect_ok(
                        http.get(format!("{base}/playlist/{user}"))
                            .bearer_auth(&session.token),
                    )
                    .await?;
                    let tracks = answer["tracks"]
                        .as_array()
                        .map(Vec::as_slice)
                        .unwrap_or_default();
                    if tracks.is_empty() {
                        println!("your playlist is empty: `chorus client playlist add <track id>`");
                    }
                    print_tracks(tracks);
                }
                PlaylistAction::Add => {
                    let body = json!({"user_id": user, "track_id": need_id()?.to_string()});
                    let answer = expect_ok(
                        http.post(format!("{base}/playlist/add"))
                            .bearer_auth(&session.token)
                            .json(&body),
                    )
                    .await?;
                    let title = answer["track_info"]["title"].as_str().unwrap_or("");
                    println!("added track {} ({title}) to your playlist", need_id()?);
                }
                PlaylistAction::Remove => {
                    let body = json!({"user_id": user, "track_id": need_id()?.to_string()});
                    expect_ok(
                        http.delete(format!("{base}/playlist/remove"))
                            .bearer_auth(&session.token)
                            .json(&body),
                    )
                    .await?;
                    println!("removed track {} from your playlist", need_id()?);
                }
            }
        }
    }
    Ok(())
}

/// `given`, or a line read from the terminal.
fn ask_or(given: &Option<String>, what: &str) -> anyhow::Result<String> {
    if let Some(value) = given {
        return Ok(value.clone());
    }
    if !std::io::stdin().is_terminal() {
        bail!("give --{what} (there is no terminal to ask on)");
    }
    eprint!("{what}: ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let value = line.trim().to_string();
    if value.is_empty() {
        bail!("no {what} given");
    }
    Ok(value)
}

/// `given` (from `--password` or CHORUS_PASSWORD), or asked for without echo.
fn password_or_prompt(given: &Option<String>) -> anyhow::Result<String> {
    if let Some(password) = given {
        return Ok(password.clone());
    }
    if !std::io::stdin().is_terminal() {
        bail!("give the password in CHORUS_PASSWORD (there is no terminal to ask on)");
    }
    rpassword::prompt_password("password: ").context("cannot read the password")
}

pub(crate) fn bar(len: u64, label: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    // Bars go to stderr and only to a terminal (indicatif hides them otherwise): the ids on
    // stdout stay easy to read from a script.
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(label.to_string());
    bar
}

/// Part boundary; it never appears in a part header and an MP3 containing it would only make the
/// node refuse the form.
const BOUNDARY: &str = "chorus-cli-4b7d0e1f9a2c";
/// How much of the file is read per piece of the request body.
const PIECE: usize = 256 * 1024;

/// Uploads one file as `multipart/form-data` streamed from disk, with a progress bar.
async fn upload(
    http: &reqwest::Client,
    base: &str,
    session: &Session,
    file: &Path,
    metadata: &Value,
) -> anyhow::Result<String> {
    let size = tokio::fs::metadata(file)
        .await
        .with_context(|| format!("cannot read {}", file.display()))?
        .len();
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().replace(['"', '\r', '\n'], "_"))
        .unwrap_or_else(|| "upload.mp3".into());
    let head = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"metadata\"\r\nContent-Type: application/json\r\n\r\n{metadata}\r\n\
         --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: audio/mpeg\r\n\r\n"
    );
    let tail = format!("\r\n--{BOUNDARY}--\r\n");
    let length = head.len() as u64 + size + tail.len() as u64;
    let progress = bar(size, &name);
    let opened = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("cannot open {}", file.display()))?;
    let pieces = futures_util::stream::unfold((opened, progress.clone()), |(mut f, bar)| async {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0; PIECE];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                bar.inc(n as u64);
                Some((Ok::<_, std::io::Error>(buf), (f, bar)))
            }
            Err(e) => Some((Err(e), (f, bar))),
        }
    });
    let body = futures_util::stream::once(async move { Ok(head.into_bytes()) })
        .chain(pieces)
        .chain(futures_util::stream::once(
            async move { Ok(tail.into_bytes()) },
        ));
    let request = http
        .post(format!("{base}/tracks/upload"))
        .bearer_auth(&session.token)
        .header(
            reqwest::header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .header(reqwest::header::CONTENT_LENGTH, length)
        .body(reqwest::Body::wrap_stream(body));
    let sent = request.send().await;
    progress.finish_and_clear();
    let response = sent.map_err(unreachable)?;
    if !response.status().is_success() {
        return Err(failure(response).await);
    }
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    answer["track_id"]
        .as_str()
        .map(str::to_string)
        .context("the node answered the upload without a track_id")
}

/// Streams track `id` to `output` through a temporary file beside it, renamed at the end, so a
/// failed download leaves no partial file.
async fn download(
    http: &reqwest::Client,
    base: &str,
    id: u64,
    output: &Path,
) -> anyhow::Result<u64> {
    let response = http
        .get(format!("{base}/tracks/{id}/file"))
        .send()
        .await
        .map_err(unreachable)?;
    if !response.status().is_success() {
        return Err(failure(response).await);
    }
    let partial = part_file(output)?;
    let label = output.file_name().map(|n| n.to_string_lossy().into_owned());
    let written = receive(
        response,
        &partial,
        label.as_deref().unwrap_or("download"),
        "the download broke off",
    )
    .await?;
    let renamed = tokio::fs::rename(&partial, output)
        .await
        .with_context(|| format!("cannot write {}", output.display()));
    if renamed.is_err() {
        let _ = tokio::fs::remove_file(&partial).await;
    }
    renamed.map(|()| written)
}

/// `.<name>.part` beside `output`: where a download goes until it is whole.
pub(crate) fn part_file(output: &Path) -> anyhow::Result<PathBuf> {
    let name = output
        .file_name()
        .context("the output path names no file")?
        .to_string_lossy();
    Ok(output.with_file_name(format!(".{name}.part")))
}

/// Writes `response`'s body to `partial` with a progress bar labelled `label`, and syncs it;
/// on any error the file is removed and `broke_off` says what was interrupted. The bytes
/// written.
pub(crate) async fn receive(
    response: reqwest::Response,
    partial: &Path,
    label: &str,
    broke_off: &'static str,
) -> anyhow::Result<u64> {
    use tokio::io::AsyncWriteExt;
    let progress = bar(response.content_length().unwrap_or(0), label);
    let result = async {
        let mut file = tokio::fs::File::create(partial)
            .await
            .with_context(|| format!("cannot write {}", partial.display()))?;
        let mut written = 0u64;
        let mut body = response.bytes_stream();
        while let Some(piece) = body.next().await {
            let piece = piece.context(broke_off)?;
            file.write_all(&piece)
                .await
                .with_context(|| format!("cannot write {}", partial.display()))?;
            written += piece.len() as u64;
            progress.inc(piece.len() as u64);
        }
        file.sync_all().await?;
        anyhow::Ok(written)
    }
    .await;
    progress.finish_and_clear();
    if result.is_err() {
        let _ = tokio::fs::remove_file(partial).await;
    }
    result
}

/// Tracks (library or playlist entries) as a table: id, duration, title, artist.
fn print_tracks(tracks: &[Value]) {
    for t in tracks {
        let text = |k: &str| t[k].as_str().unwrap_or("").to_string();
        println!(
            "{:>6}  {:>7}  {}  —  {}",
            text("track_id"),
            text("duration"),
            text("title"),
            text("artist")
        );
    }
}
