//! Fetching release data over HTTP(S) for `refit catalog update`: a whole catalog, or one of
//! upstream's release markers (`stable-1.N.txt`). The same pooled, bounded client as the health
//! gates' probes (one answer within 10 s, at most 4 MiB kept).

/// What a GET brought back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// 2xx: the body.
    Body(String),
    /// 404: nothing at that address (a minor not released yet has no marker).
    Missing,
}

/// GETs `url`; any answer other than 2xx or 404, or none, is an error naming the address.
pub async fn fetch(url: &str) -> Result<Fetched, String> {
    match crate::gate::get(url).await {
        Ok((status, body)) if (200..300).contains(&status) => Ok(Fetched::Body(body)),
        Ok((404, _)) => Ok(Fetched::Missing),
        Ok((status, body)) => {
            let said: String = body
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or_default()
                .chars()
                .take(120)
                .collect();
            Err(if said.is_empty() {
                format!("{url} answered HTTP {status}")
            } else {
                format!("{url} answered HTTP {status}: {said}")
            })
        }
        Err(e) => Err(format!("{url}: {e}")),
    }
}
