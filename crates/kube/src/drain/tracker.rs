//! The pods the drain waits for, tracked by UID through the watch on the node.

use super::*;

/// The pods the drain waits for, and which of them are gone, fed by the watch on the node.
pub(super) struct Tracker {
    state: Mutex<Tracked>,
    /// Bumped on every change; waiters re-check on each bump.
    tx: watch::Sender<u64>,
}

#[derive(Default)]
pub(super) struct Tracked {
    by_name: HashMap<(String, String), String>,
    uids: HashSet<String>,
    gone: HashSet<String>,
}

impl Tracker {
    pub(super) fn new<'a>(pods: impl Iterator<Item = &'a PodRef>) -> Tracker {
        let mut t = Tracked::default();
        for p in pods {
            t.by_name.insert((p.namespace.clone(), p.name.clone()), p.uid.clone());
            t.uids.insert(p.uid.clone());
        }
        Tracker { state: Mutex::new(t), tx: watch::Sender::new(0) }
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }

    pub(super) fn is_gone(&self, uid: &str) -> bool {
        lock(&self.state).gone.contains(uid)
    }

    pub(super) fn bump(&self, changed: bool) {
        if changed {
            self.tx.send_modify(|v| *v += 1);
        }
    }
}

impl Tracked {
    pub(super) fn mark(&mut self, uid: &str) -> bool {
        self.uids.contains(uid) && self.gone.insert(uid.to_string())
    }

    /// A pod object seen: if its name belongs to a tracked pod with another UID, that pod is
    /// gone (its successor took the name).
    pub(super) fn seen(&mut self, p: &Pod) -> bool {
        let key = (p.namespace().unwrap_or_default(), p.name_any());
        let uid = p.metadata.uid.clone().unwrap_or_default();
        match self.by_name.get(&key).cloned() {
            Some(tracked) if tracked != uid => self.mark(&tracked),
            _ => false,
        }
    }
}

impl Sink<Pod> for Tracker {
    fn applied(&self, p: Pod) {
        let changed = lock(&self.state).seen(&p);
        self.bump(changed);
    }

    fn deleted(&self, p: Pod) {
        let changed = {
            let mut st = lock(&self.state);
            let uid = p.metadata.uid.clone().unwrap_or_default();
            st.mark(&uid) | st.seen(&p)
        };
        self.bump(changed);
    }

    fn relisted(&self, pods: Vec<Pod>) {
        let changed = {
            let mut st = lock(&self.state);
            let present: HashSet<String> = pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
            let missing: Vec<String> = st.uids.iter().filter(|u| !present.contains(*u)).cloned().collect();
            let mut changed = false;
            for uid in missing {
                changed |= st.mark(&uid);
            }
            for p in &pods {
                changed |= st.seen(p);
            }
            changed
        };
        self.bump(changed);
    }
}
