//! Values a cluster writes that refit uses as names or command arguments: checked before use.
//!
//! A cluster is not trusted to be well-formed: whoever can write a Node object (a compromised
//! kubelet can write its own) chooses its InternalIP and kubeletVersion, and those reach the
//! node action as `{address}`/`REFIT_ADDRESS` and `{from}`; the kube-system namespace's UID
//! names refit's lock file. Each is parsed into what it claims to be, and [`printable`] takes
//! the control characters out of any text from a node before it is printed.

use std::fmt;
use std::net::IpAddr;

/// A cluster's identity: the UID of its kube-system namespace, as the apiserver generates it
/// (an RFC 4122 UUID in its 36-character text form).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterUid(String);

/// A cluster UID that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the cluster's identity (the UID of namespace kube-system) is {shown}, not a UID like 0b3c9f6e-5c1a-4f4e-9a57-2d0c1e8b7a10: refusing to use it as a name; check that the kubeconfig points at a real apiserver"
)]
pub struct ClusterUidError {
    /// The value, quoted and cut for printing.
    pub shown: String,
}

impl ClusterUid {
    /// Parses `8-4-4-4-12` hex digits (either case, kept as given).
    pub fn parse(s: &str) -> Result<ClusterUid, ClusterUidError> {
        let groups: Vec<&str> = s.split('-').collect();
        let lengths = [8, 4, 4, 4, 12];
        let ok = groups.len() == lengths.len()
            && groups
                .iter()
                .zip(lengths)
                .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()));
        if ok { Ok(ClusterUid(s.to_string())) } else { Err(ClusterUidError { shown: quoted(s) }) }
    }

    /// The UID.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClusterUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An address refit hands to a node action: an IP address or a DNS name, never anything an
/// ssh client or a script could read as an option (`-oProxyCommand=...`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NodeAddress {
    /// An IPv4 or IPv6 address.
    Ip(IpAddr),
    /// A DNS name (RFC 1123 labels: letters, digits, inner dashes, 1–63 each, 253 in all).
    Dns(String),
}

/// An address that is neither an IP nor a DNS name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("address {shown} is neither an IP address nor a DNS name")]
pub struct AddressError {
    /// The value, quoted and cut for printing.
    pub shown: String,
}

impl NodeAddress {
    /// Parses an IP address, else a DNS name.
    pub fn parse(s: &str) -> Result<NodeAddress, AddressError> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(NodeAddress::Ip(ip));
        }
        if is_dns_name(s) {
            return Ok(NodeAddress::Dns(s.to_string()));
        }
        Err(AddressError { shown: quoted(s) })
    }
}

impl fmt::Display for NodeAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeAddress::Ip(ip) => ip.fmt(f),
            NodeAddress::Dns(name) => f.write_str(name),
        }
    }
}

/// A lowercase RFC 1123 label of 1 to `max` characters: lowercase letters, digits and inner
/// dashes (`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`). Kubernetes object names of that kind
/// (namespaces, node names refit creates) are at most 63; fleet objects shorter (see
/// [`crate::fleet::is_valid_name`]). The one spelling of this grammar for every caller.
pub fn is_dns_label(s: &str, max: usize) -> bool {
    let b = s.as_bytes();
    let inner = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-';
    !b.is_empty()
        && b.len() <= max
        && b.iter().all(inner)
        && b.first().is_some_and(|c| *c != b'-')
        && b.last().is_some_and(|c| *c != b'-')
}

/// The longest Kubernetes label-shaped name (RFC 1123).
pub const DNS_LABEL_MAX: usize = 63;

/// RFC 1123 host name: dot-separated labels of ASCII letters, digits and inner dashes, each
/// 1–63 characters, 253 in all; one trailing dot allowed. No label starts with a dash, so no
/// name reads as an option.
pub fn is_dns_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| is_dns_label(&label.to_ascii_lowercase(), DNS_LABEL_MAX))
}

/// `text` with every control character (ANSI escapes, carriage returns, backspaces, other
/// C0/C1 codes, bidi overrides) replaced by `?`, tabs by a space, and newlines kept only when
/// `keep_newlines`: what a node or an action printed cannot rewrite the operator's terminal
/// (move the cursor, hide a line, fake a prompt) or forge a line of refit's own output.
pub fn printable(text: &str, keep_newlines: bool) -> String {
    text.chars()
        .map(|c| match c {
            '\n' if keep_newlines => '\n',
            '\t' => ' ',
            c if c.is_control() || is_bidi_control(c) => '?',
            c => c,
        })
        .collect()
}

/// Unicode's explicit directional formatting characters (they reorder what a terminal shows).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}

/// A value from a cluster, quoted, made printable and cut to 80 characters for a message.
fn quoted(s: &str) -> String {
    let clean = printable(s, false);
    let mut cut: String = clean.chars().take(80).collect();
    if clean.chars().count() > 80 {
        cut.push('…');
    }
    format!("'{cut}'")
}

/// Who a host says it is: its host name and `/etc/machine-id`, read over the node's action
/// transport when the plan is made. The ssh action compares the host it reaches with this
/// before running anything: an address that now leads elsewhere (a recycled IP, a DNS change,
/// an InternalIP a compromised node rewrote) must not receive another node's recipe.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostIdentity {
    /// `uname -n`.
    pub hostname: String,
    /// `/etc/machine-id`, when the host has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<String>,
}

impl HostIdentity {
    /// Why `seen` is not this host (`None` when it is): the machine id decides when both
    /// have one, else the host name.
    pub fn differs(&self, seen: &HostIdentity) -> Option<String> {
        let show = |s: &str| printable(s, false).chars().take(64).collect::<String>();
        match (&self.machine_id, &seen.machine_id) {
            (Some(want), Some(got)) if want != got => {
                Some(format!("machine-id {} where the plan recorded {}", show(got), show(want)))
            }
            (Some(_), None) => Some("no /etc/machine-id where the plan recorded one".into()),
            _ if self.hostname != seen.hostname => Some(format!(
                "host name {} where the plan recorded {}",
                show(&seen.hostname),
                show(&self.hostname)
            )),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cluster_uids() {
        assert!(ClusterUid::parse("0b3c9f6e-5c1a-4f4e-9a57-2d0c1e8b7a10").is_ok());
        assert!(ClusterUid::parse("0B3C9F6E-5C1A-4F4E-9A57-2D0C1E8B7A10").is_ok());
        for bad in [
            "",
            "../../etc/passwd",
            "0b3c9f6e-5c1a-4f4e-9a57-2d0c1e8b7a1",
            "0b3c9f6e-5c1a-4f4e-9a57-2d0c1e8b7a10-",
            "0b3c9f6e/5c1a-4f4e-9a57-2d0c1e8b7a10",
            "zb3c9f6e-5c1a-4f4e-9a57-2d0c1e8b7a10",
        ] {
            let e = ClusterUid::parse(bad).unwrap_err().to_string();
            assert!(e.contains("not a UID"), "{bad}: {e}");
        }
    }

    #[test]
    fn addresses() {
        assert_eq!(NodeAddress::parse("10.0.1.3").unwrap().to_string(), "10.0.1.3");
        assert_eq!(NodeAddress::parse("fd00::1").unwrap().to_string(), "fd00::1");
        assert_eq!(NodeAddress::parse("worker-1.example.com").unwrap().to_string(), "worker-1.example.com");
        assert!(NodeAddress::parse("node.").is_ok());
        for bad in [
            "",
            "-oProxyCommand=touch /tmp/x",
            "-1.example",
            "a b",
            "host;rm",
            "a..b",
            "x\u{1b}[2J",
            "$(id)",
            "[fd00::1]",
            &"a".repeat(64),
        ] {
            let e = NodeAddress::parse(bad).unwrap_err().to_string();
            assert!(e.contains("neither an IP address nor a DNS name"), "{bad}: {e}");
            assert!(!e.contains('\u{1b}'), "{e}");
        }
    }

    #[test]
    fn printable_text() {
        assert_eq!(printable("ok\x1b[2Jdone\r\n", false), "ok?[2Jdone??");
        assert_eq!(printable("a\nb\tc", true), "a\nb c");
        assert_eq!(printable("evil\u{202E}txt.exe", false), "evil?txt.exe");
        assert_eq!(printable("\u{9b}31m", false), "?31m", "C1 CSI");
        assert_eq!(printable("grüße", false), "grüße");
    }

    proptest! {
        #[test]
        fn an_accepted_address_never_reads_as_an_option_or_carries_controls(s in "\\PC{0,40}|-[a-zA-Z0-9=. -]{0,20}") {
            if let Ok(a) = NodeAddress::parse(&s) {
                let t = a.to_string();
                prop_assert!(!t.starts_with('-'));
                prop_assert!(!t.chars().any(|c| c.is_control() || c.is_whitespace()));
            }
        }

        #[test]
        fn a_dns_label_is_exactly_its_pattern(s in "[a-z0-9-]{0,70}|\\PC{0,10}", max in 1usize..70) {
            let pattern = !s.is_empty()
                && s.len() <= max
                && s.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                && !s.starts_with('-')
                && !s.ends_with('-');
            prop_assert_eq!(is_dns_label(&s, max), pattern);
            if is_dns_label(&s, max.min(DNS_LABEL_MAX)) {
                prop_assert!(is_dns_name(&s), "a label of up to 63 is a host name");
            }
        }

        #[test]
        fn printable_leaves_no_control_character(s in any::<String>(), keep in any::<bool>()) {
            let p = printable(&s, keep);
            prop_assert!(!p.chars().any(|c| (c.is_control() && c != '\n') || is_bidi_control(c)));
            prop_assert_eq!(p.chars().count(), s.chars().count());
        }
    }

    #[test]
    fn a_host_is_the_one_recorded_when_its_machine_id_and_name_match() {
        let rec = HostIdentity { hostname: "w-1".into(), machine_id: Some("aa".into()) };
        assert_eq!(rec.differs(&rec.clone()), None);
        let other = HostIdentity { machine_id: Some("bb".into()), ..rec.clone() };
        assert!(rec.differs(&other).unwrap().contains("machine-id bb where the plan recorded aa"));
        let renamed = HostIdentity { hostname: "w-2".into(), ..rec.clone() };
        assert!(rec.differs(&renamed).unwrap().contains("host name w-2"));
        let bare = HostIdentity { machine_id: None, ..rec.clone() };
        assert!(rec.differs(&bare).is_some(), "a machine id that vanished is another host");
        let by_name = HostIdentity { hostname: "w-1".into(), machine_id: None };
        assert_eq!(by_name.differs(&rec), None, "no machine id recorded: the name decides");
        let hostile = HostIdentity { hostname: "w-1\u{1b}]0;pwned\u{7}".into(), machine_id: None };
        assert!(!by_name.differs(&hostile).unwrap().contains('\u{1b}'));
    }
}
