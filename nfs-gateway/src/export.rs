//! Who may use the export, and as whom: address rules, read-only, and uid squashing.

use std::net::IpAddr;
use std::str::FromStr;

use elasticfs_core::Identity;
use ipnet::IpNet;

use crate::rpc::AuthSys;

/// How callers' ids are mapped before permission checks (as knfsd's root_squash/all_squash).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Squash {
    None,
    Root,
    All,
}

impl FromStr for Squash {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Squash::None),
            "root" => Ok(Squash::Root),
            "all" => Ok(Squash::All),
            other => Err(format!("unknown squash mode '{other}': use none, root or all")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ExportConfig {
    /// Client networks allowed; empty allows every address.
    pub allow: Vec<IpNet>,
    pub read_only: bool,
    pub squash: Squash,
    pub anon_uid: u32,
    pub anon_gid: u32,
    /// NFSv4's lease: a client not heard from for this long loses its opens.
    pub lease: std::time::Duration,
}

impl Default for ExportConfig {
    fn default() -> Self {
        ExportConfig {
            allow: Vec::new(),
            read_only: false,
            squash: Squash::Root,
            anon_uid: 65534,
            anon_gid: 65534,
            lease: std::time::Duration::from_secs(90),
        }
    }
}

/// Parses `10.0.0.0/8`, `192.168.1.5` (one address) or `::1`.
pub fn parse_network(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("'{text}' is not an address or a network such as 10.0.0.0/8"))
}

impl ExportConfig {
    pub fn allows(&self, peer: IpAddr) -> bool {
        // An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
            v4 => v4,
        };
        self.allow.is_empty() || self.allow.iter().any(|net| net.contains(&peer))
    }

    /// The identity a call acts as: its AUTH_SYS ids after squashing; AUTH_NULL is anonymous.
    pub fn identity(&self, auth: Option<&AuthSys>) -> Identity {
        let anon = Identity { uid: self.anon_uid, gid: self.anon_gid, groups: Vec::new() };
        match (auth, self.squash) {
            (None, _) | (Some(_), Squash::All) => anon,
            (Some(a), Squash::Root) if a.uid == 0 => anon,
            (Some(a), _) => Identity { uid: a.uid, gid: a.gid, groups: a.groups.clone() },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(uid: u32) -> AuthSys {
        AuthSys { uid, gid: uid, groups: vec![] }
    }

    #[test]
    fn networks_and_single_addresses_are_matched() {
        let config = ExportConfig {
            allow: vec![parse_network("10.0.0.0/8").unwrap(), parse_network("127.0.0.1").unwrap()],
            ..Default::default()
        };
        assert!(config.allows("10.1.2.3".parse().unwrap()));
        assert!(config.allows("127.0.0.1".parse().unwrap()));
        assert!(config.allows("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!config.allows("127.0.0.2".parse().unwrap()));
        assert!(ExportConfig::default().allows("192.0.2.1".parse().unwrap()));
        assert!(parse_network("10.0.0.0/33").is_err());
    }

    #[test]
    fn squashing_maps_root_or_everyone_to_the_anonymous_ids() {
        let root = ExportConfig { squash: Squash::Root, anon_uid: 99, anon_gid: 98, ..Default::default() };
        assert_eq!(root.identity(Some(&auth(0))).uid, 99);
        assert_eq!(root.identity(Some(&auth(1000))).uid, 1000);
        assert_eq!(root.identity(None).gid, 98);
        let none = ExportConfig { squash: Squash::None, ..Default::default() };
        assert_eq!(none.identity(Some(&auth(0))).uid, 0);
        let all = ExportConfig { squash: Squash::All, anon_uid: 99, ..Default::default() };
        assert_eq!(all.identity(Some(&auth(1000))).uid, 99);
    }
}
