//! Just enough of the W3C WebDriver protocol to drive headless Chromium through Debian's
//! `chromedriver`: sessions, navigation, scripts, elements, clicks, typing, screenshots.
//!
//! Written against the protocol (plain JSON over HTTP with the test's own reqwest) rather than
//! pulling in a WebDriver crate and its dependency tree for a handful of calls.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use serde_json::{Value, json};

/// Set to `require` to fail (not skip) when no browser is installed: CI sets it.
pub const REQUIRE_ENV: &str = "CHORUS_BROWSER_TESTS";

const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// The `chromedriver` and `chromium` binaries, or `None` (with the reason printed) when this
/// machine has none and the test should be skipped.
pub fn find_browser() -> Option<(PathBuf, PathBuf)> {
    let find = |names: &[&str]| -> Option<PathBuf> {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
            .find(|p| p.is_file())
    };
    match (
        find(&["chromedriver"]),
        find(&["chromium", "chromium-browser"]),
    ) {
        (Some(driver), Some(browser)) => Some((driver, browser)),
        _ => {
            let message = "skipping the browser tests: chromedriver or chromium is not installed \
                           (Debian: apt-get install chromium chromium-driver)";
            assert!(
                std::env::var(REQUIRE_ENV).as_deref() != Ok("require"),
                "{message}, and {REQUIRE_ENV}=require"
            );
            eprintln!("{message}");
            None
        }
    }
}

/// A running `chromedriver`, killed on drop.
pub struct Driver {
    child: Child,
    url: String,
    browser: PathBuf,
    client: reqwest::Client,
    profiles: tempfile::TempDir,
}

impl Driver {
    pub async fn start(driver: &Path, browser: &Path) -> anyhow::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start {}", driver.display()))?;
        let client = super::http_client_builder()
            .timeout(Duration::from_secs(60))
            .no_proxy()
            .build()?;
        let driver = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            browser: browser.to_path_buf(),
            client,
            profiles: tempfile::tempdir()?,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = driver
                .client
                .get(format!("{}/status", driver.url))
                .send()
                .await
                .ok();
            if let Some(resp) = ready
                && let Ok(status) = resp.json::<Value>().await
                && status["value"]["ready"] == true
            {
                return Ok(driver);
            }
            if Instant::now() > deadline {
                bail!("chromedriver did not become ready within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A new headless browser window of `width` x `height`.
    pub async fn browser(&self, name: &str, width: u32, height: u32) -> anyhow::Result<Browser> {
        let profile = self.profiles.path().join(name);
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": self.browser,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--autoplay-policy=no-user-gesture-required", "--mute-audio",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        let value = call(
            &self.client,
            reqwest::Method::POST,
            &format!("{}/session", self.url),
            Some(caps),
        )
        .await
        .context("start a browser session")?;
        let id = value["sessionId"]
            .as_str()
            .context("no sessionId in the new session")?;
        Ok(Browser {
            client: self.client.clone(),
            session: format!("{}/session/{id}", self.url),
            name: name.to_string(),
        })
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn call(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let mut request = client.request(method.clone(), url);
    if let Some(body) = body {
        request = request.json(&body);
    } else if method == reqwest::Method::POST {
        request = request.json(&json!({}));
    }
    let resp = request
        .send()
        .await
        .with_context(|| format!("{method} {url}"))?;
    let status = resp.status();
    let body: Value = resp
        .json()
        .await
        .with_context(|| format!("{method} {url}"))?;
    if !status.is_success() {
        bail!("{method} {url}: {status} {}", body["value"]);
    }
    Ok(body["value"].clone())
}

/// One browser window (a WebDriver session).
pub struct Browser {
    client: reqwest::Client,
    session: String,
    pub name: String,
}

impl Browser {
    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        call(
            &self.client,
            reqwest::Method::POST,
            &format!("{}{path}", self.session),
            Some(body),
        )
        .await
        .with_context(|| format!("browser {}", self.name))
    }

    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.post("/url", json!({ "url": url })).await.map(|_| ())
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) and returns what it returns.
    pub async fn eval(&self, script: &str, args: Value) -> anyhow::Result<Value> {
        self.post("/execute/sync", json!({ "script": script, "args": args }))
            .await
    }

    async fn element(&self, css: &str) -> anyhow::Result<String> {
        let found = self
            .post("/element", json!({"using": "css selector", "value": css}))
            .await
            .with_context(|| format!("find `{css}`"))?;
        found[ELEMENT_KEY]
            .as_str()
            .map(str::to_string)
            .context("no element id")
    }

    /// Clicks the first element matching `css`, as a user would (scrolled into view). A live
    /// page may re-render the element between finding and clicking it: then it is found again.
    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let element = self.element(css).await?;
            let clicked = self
                .post(&format!("/element/{element}/click"), json!({}))
                .await
                .with_context(|| format!("click `{css}`"));
            match clicked {
                Err(e) if attempts < 5 && format!("{e:#}").contains("stale element") => continue,
                other => return other.map(|_| ()),
            }
        }
    }

    /// Types `text` into the first element matching `css` (for a file input: a file's path).
    pub async fn type_into(&self, css: &str, text: &str) -> anyhow::Result<()> {
        let element = self.element(css).await?;
        self.post(
            &format!("/element/{element}/value"),
            json!({ "text": text }),
        )
        .await
        .with_context(|| format!("type into `{css}`"))
        .map(|_| ())
    }

    /// The text of the first element matching `css` (`None` when there is none).
    pub async fn text(&self, css: &str) -> anyhow::Result<Option<String>> {
        let value = self
            .eval(
                "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
                json!([css]),
            )
            .await?;
        Ok(value.as_str().map(str::to_string))
    }

    /// Polls `script` until it returns something other than `null`/`false`, or fails after
    /// `timeout` with `what`.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        script: &str,
        args: Value,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.eval(script, args.clone()).await?;
            if !value.is_null() && value != false {
                return Ok(value);
            }
            if Instant::now() > deadline {
                bail!(
                    "browser {}: timed out after {timeout:?} waiting for {what}",
                    self.name
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn resize(&self, width: u32, height: u32) -> anyhow::Result<()> {
        self.post("/window/rect", json!({"width": width, "height": height}))
            .await
            .map(|_| ())
    }

    /// Saves a PNG of the window to `path`.
    pub async fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let value = call(
            &self.client,
            reqwest::Method::GET,
            &format!("{}/screenshot", self.session),
            None,
        )
        .await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(value.as_str().context("screenshot is not a string")?)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png)?;
        eprintln!("    screenshot: {}", path.display());
        Ok(())
    }

    pub async fn close(self) {
        let _ = call(&self.client, reqwest::Method::DELETE, &self.session, None).await;
    }
}
