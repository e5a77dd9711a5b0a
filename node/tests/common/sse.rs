//! A Server-Sent Events client for `GET /events`: reads a live stream and parses its events.

use std::time::Duration;

use serde_json::Value;

/// One event of the stream.
#[derive(Debug, Clone)]
pub struct SseEvent {
    /// The SSE `id` (a Raft index).
    pub id: u64,
    /// `state` or `change`.
    pub kind: String,
    pub data: Value,
}

/// An open `/events` stream.
pub struct EventStream {
    response: reqwest::Response,
    buffer: String,
    pub url: String,
}

impl EventStream {
    /// Opens `base/events`, resuming after `last_id` (sent as `Last-Event-ID`) when given.
    pub async fn open(base: &str, last_id: Option<u64>) -> anyhow::Result<Self> {
        // No overall timeout: the stream stays open; each read has its own.
        let client = super::http_client_builder()
            .connect_timeout(Duration::from_secs(2))
            .no_proxy()
            .build()?;
        let url = format!("{base}/events");
        let mut request = client.get(&url);
        if let Some(id) = last_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request.send().await?;
        anyhow::ensure!(response.status() == 200, "GET {url}: {}", response.status());
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        anyhow::ensure!(
            content_type.starts_with("text/event-stream"),
            "GET {url}: content type {content_type}"
        );
        Ok(Self {
            response,
            buffer: String::new(),
            url,
        })
    }

    /// The next event, `None` if none comes within `wait` or the stream ended.
    pub async fn next(&mut self, wait: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if let Some(event) = parse(&block) {
                    return Some(event);
                }
            }
            match tokio::time::timeout_at(deadline, self.response.chunk()).await {
                Ok(Ok(Some(bytes))) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                _ => return None,
            }
        }
    }

    /// Events until `done` says enough was seen, or panics after `wait`.
    pub async fn until(
        &mut self,
        wait: Duration,
        mut done: impl FnMut(&[SseEvent]) -> bool,
    ) -> Vec<SseEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut seen = Vec::new();
        while !done(&seen) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(event) => seen.push(event),
                None => panic!(
                    "{}: no more events within {wait:?}; got {}",
                    self.url,
                    describe(&seen)
                ),
            }
        }
        seen
    }
}

/// `id kind [change types]` per event, for messages.
pub fn describe(events: &[SseEvent]) -> String {
    events
        .iter()
        .map(|e| format!("{} {} {:?}", e.id, e.kind, change_types(e)))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The `type` of each change in a `change` event.
pub fn change_types(event: &SseEvent) -> Vec<String> {
    event.data["changes"]
        .as_array()
        .map(|changes| {
            changes
                .iter()
                .map(|c| c["type"].as_str().unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn parse(block: &str) -> Option<SseEvent> {
    let (mut id, mut kind, mut data) = (None, String::from("message"), String::new());
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("id: ") {
            id = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("event: ") {
            kind = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("data: ") {
            data.push_str(v);
        }
    }
    Some(SseEvent {
        id: id?,
        kind,
        data: serde_json::from_str(&data).ok()?,
    })
}
