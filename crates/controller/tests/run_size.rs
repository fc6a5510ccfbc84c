//! An UpdateRun must fit in one etcd object (about 1.5 MiB; the API server refuses larger
//! requests): at 1,000 and 5,000 members, with every member finished (each carrying its
//! target, timings, operation and message), the object as the controller writes it — the tree
//! in the UpdateRun, each member's detail in its ClusterUpgrade (`layout`) — stays under
//! 1 MiB. Sizes are printed (`--nocapture`).

mod support;

use support::{MIB, finished_run, object};

#[test]
fn an_update_run_of_5000_members_stays_under_one_mebibyte() {
    for n in [1_000, 5_000] {
        let run = finished_run(n);
        let whole = serde_json::to_vec(&run).unwrap().len();
        let obj = object(run);
        let status = obj.status.as_ref().unwrap();
        assert_eq!((status.members, status.done), (n as u32, n as u32));
        let bytes = serde_json::to_vec(&obj).unwrap().len();
        println!(
            "{n} members, all finished: core's whole RunState {whole} bytes ({} per member); \
             the UpdateRun (detail in ClusterUpgrades) {bytes} bytes ({:.1} KiB, {:.1}% of 1 MiB, {} per member)",
            whole / n,
            bytes as f64 / 1024.0,
            bytes as f64 * 100.0 / MIB as f64,
            bytes / n
        );
        assert!(bytes < MIB, "{n} members: {bytes} bytes");
    }
}
