//! An apiserver's `/readyz?verbose`: one line per check (`[+]ping ok`, `[-]etcd failed: reason
//! withheld`) and a last line (`readyz check passed|failed`). The HTTP status decides; the
//! lines name the failing checks, which is what an operator needs to act.

/// What one apiserver's `/readyz?verbose` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readyz {
    /// The endpoint answered 200.
    pub ready: bool,
    /// The checks that failed (`etcd`, `poststarthook/start-apiextensions-informers`).
    pub failing: Vec<String>,
}

impl Readyz {
    /// Reads the answer: its HTTP status and body.
    pub fn parse(status: u16, body: &str) -> Readyz {
        let failing = body
            .lines()
            .filter_map(|l| l.trim().strip_prefix("[-]"))
            .map(|rest| rest.split_whitespace().next().unwrap_or_default().to_string())
            .filter(|n| !n.is_empty())
            .collect();
        Readyz { ready: status == 200, failing }
    }

    /// One line for an apiserver that is not ready, naming its failing checks.
    pub fn reason(&self, apiserver: &str) -> Option<String> {
        if self.ready {
            return None;
        }
        Some(if self.failing.is_empty() {
            format!("apiserver {apiserver} is not ready (/readyz answered without naming a failing check)")
        } else {
            format!("apiserver {apiserver} is not ready: failing {}", self.failing.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_failing_checks() {
        let body = "[+]ping ok\n[+]log ok\n[-]etcd failed: reason withheld\n[+]etcd-readiness ok\n[-]poststarthook/start-apiextensions-informers failed: reason withheld\nreadyz check failed\n";
        let r = Readyz::parse(500, body);
        assert_eq!(r.failing, ["etcd", "poststarthook/start-apiextensions-informers"]);
        assert_eq!(
            r.reason("https://10.0.0.1:6443").unwrap(),
            "apiserver https://10.0.0.1:6443 is not ready: failing etcd, poststarthook/start-apiextensions-informers"
        );
        let ok = Readyz::parse(200, "[+]ping ok\n[+]etcd ok\nreadyz check passed\n");
        assert!(ok.ready && ok.failing.is_empty() && ok.reason("x").is_none());
        assert!(Readyz::parse(503, "").reason("x").unwrap().contains("without naming"));
    }
}
