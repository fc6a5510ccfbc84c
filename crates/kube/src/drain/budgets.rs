//! PodDisruptionBudgets as the watch last saw them: who may try again after a budget changes.

use super::*;

/// anything the drain looks at changes) and the retries already granted in that epoch.
pub(super) struct PdbCache {
    pub(super) state: Mutex<PdbState>,
    pub(super) tx: watch::Sender<u64>,
}

#[derive(Default)]
pub(super) struct PdbState {
    budgets: HashMap<String, Budget>,
    epoch: u64,
}

pub(super) struct Budget {
    info: PdbInfo,
    epoch: u64,
    /// Retries let through since `epoch` began: at most `disruptions_allowed` of them.
    granted: i32,
}

/// Whether a gated pod may ask now.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Gate {
    Open,
    /// `seen`: the pod's budget fingerprint at the decision, to wait for a change from.
    Closed {
        pdb: String,
        reason: String,
        seen: Vec<(String, u64)>,
    },
}

impl PdbState {
    pub(super) fn put(&mut self, info: PdbInfo) -> bool {
        let key = info.key();
        if self.budgets.get(&key).is_some_and(|b| b.info == info) {
            return false;
        }
        self.epoch += 1;
        self.budgets.insert(key, Budget { info, epoch: self.epoch, granted: 0 });
        true
    }

    /// Budgets covering a pod (`PdbInfo::covers_labels`: core's one rule, the apiserver's).
    pub(super) fn covering<'s>(
        &'s mut self,
        namespace: &'s str,
        labels: &'s BTreeMap<String, String>,
    ) -> impl Iterator<Item = (&'s String, &'s mut Budget)> + 's {
        self.budgets.iter_mut().filter(move |(_, b)| b.info.covers_labels(namespace, labels))
    }
}

impl PdbCache {
    pub(super) fn new(items: Vec<PodDisruptionBudget>) -> PdbCache {
        let mut st = PdbState::default();
        for p in items {
            st.put(pdb_info(p));
        }
        PdbCache { state: Mutex::new(st), tx: watch::Sender::new(0) }
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }

    pub(super) fn bump(&self, changed: bool) {
        if changed {
            self.tx.send_modify(|v| *v += 1);
        }
    }

    /// The covering budgets and their epochs: equal fingerprints = nothing changed for this pod.
    pub(super) fn fingerprint(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Vec<(String, u64)> {
        let mut st = lock(&self.state);
        let mut fp: Vec<(String, u64)> =
            st.covering(namespace, labels).map(|(k, b)| (k.clone(), b.epoch)).collect();
        fp.sort();
        fp
    }

    pub(super) fn names(&self, namespace: &str, labels: &BTreeMap<String, String>) -> Option<String> {
        let names: Vec<String> = self.fingerprint(namespace, labels).into_iter().map(|(k, _)| k).collect();
        (!names.is_empty()).then(|| names.join(", "))
    }

    /// Core's budget gate over the covering budgets and the retries granted since their last
    /// change; a pod let through on a budget's allowance takes one.
    pub(super) fn gate(&self, namespace: &str, labels: &BTreeMap<String, String>) -> Gate {
        let mut st = lock(&self.state);
        let mut covering: Vec<(&String, &mut Budget)> = st.covering(namespace, labels).collect();
        let view: Vec<(&PdbInfo, i32)> = covering.iter().map(|(_, b)| (&b.info, b.granted)).collect();
        match (pdb::gate(&view), covering.as_mut_slice()) {
            (pdb::Gate::AskTakingOne, [(_, b)]) => {
                b.granted = b.granted.saturating_add(1);
                Gate::Open
            }
            (pdb::Gate::Wait, [(key, b)]) => Gate::Closed {
                pdb: (*key).clone(),
                seen: vec![((*key).clone(), b.epoch)],
                reason: b.info.exhausted_reason(),
            },
            _ => Gate::Open,
        }
    }
}

impl Sink<PodDisruptionBudget> for PdbCache {
    fn applied(&self, p: PodDisruptionBudget) {
        let changed = lock(&self.state).put(pdb_info(p));
        self.bump(changed);
    }

    fn deleted(&self, p: PodDisruptionBudget) {
        let key = format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any());
        let changed = lock(&self.state).budgets.remove(&key).is_some();
        self.bump(changed);
    }

    fn relisted(&self, items: Vec<PodDisruptionBudget>) {
        let changed = {
            let mut st = lock(&self.state);
            let infos: Vec<PdbInfo> = items.into_iter().map(pdb_info).collect();
            let keys: HashSet<String> = infos.iter().map(|i| i.key()).collect();
            let before = st.budgets.len();
            st.budgets.retain(|k, _| keys.contains(k));
            let mut changed = st.budgets.len() != before;
            for info in infos {
                changed |= st.put(info);
            }
            changed
        };
        self.bump(changed);
    }
}
