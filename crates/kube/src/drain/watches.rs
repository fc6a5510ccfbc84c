//! The two watches a drain runs (its node's pods, the PodDisruptionBudgets): kube's `watcher` feeding a sink, aborted when the drain ends.

use super::*;

/// Aborts a spawned watch when the drain ends (however it ends, cancellation included).
pub(super) struct AbortOnDrop(pub(super) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a watch feeds.
pub(super) trait Sink<K>: Send + Sync + 'static {
    fn applied(&self, obj: K);
    fn deleted(&self, obj: K);
    /// A fresh list after the watch fell too far behind (410): deletions in between are
    /// only visible as absences.
    fn relisted(&self, objs: Vec<K>);
}

/// Feeds `sink` from a watch on `api` for as long as the drain runs: kube's `watcher`, which
/// resumes from the last resourceVersion it saw (bookmarks keep it fresh), re-lists when the
/// apiserver answers 410 Gone (handed to the sink as [`Sink::relisted`]: its first list too,
/// which shows anything deleted since the caller's own list as absent), and re-opens a failed
/// watch after a jittered exponential backoff.
pub(super) async fn watch_forever<K, S>(api: Api<K>, fields: Option<String>, sink: Arc<S>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Default,
    S: Sink<K>,
{
    let mut config = watcher::Config::default().timeout(WATCH_SECONDS);
    if let Some(f) = &fields {
        config = config.fields(f);
    }
    let mut stream = watcher(api, config).default_backoff().boxed();
    let mut listed = Vec::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Apply(o)) => sink.applied(o),
            Ok(watcher::Event::Delete(o)) => sink.deleted(o),
            Ok(watcher::Event::Init) => listed.clear(),
            Ok(watcher::Event::InitApply(o)) => listed.push(o),
            Ok(watcher::Event::InitDone) => sink.relisted(std::mem::take(&mut listed)),
            // The backoff re-opens the watch; the drain's deadline bounds the whole wait.
            Err(e) => tracing::debug!("watch interrupted: {e}"),
        }
    }
}
