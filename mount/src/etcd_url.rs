//! `etcd://host1:2379,host2:2379,host3:2379/NAME[?options]` and `etcds://…` (TLS): a file
//! system whose metadata lives in an etcd cluster, under the key prefix `NAME/`.
//!
//! Options: `ca=PATH` (the CA of the members' certificates; `etcds://` needs it, or
//! `ELASTICFS_ETCD_CA`), `user=NAME` with the password from `password-file=PATH` or
//! `ELASTICFS_ETCD_PASSWORD` (never in the URL itself).

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use elasticfs_core::metadata::kv::EtcdOptions;

pub fn parse(url: &str, tls: bool, rest: &str) -> Result<EtcdOptions> {
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let Some((hosts, name)) = rest.split_once('/') else {
        bail!("etcd URL {url:?} needs a file system name: etcd://host1:2379,host2:2379/NAME");
    };
    let name = name.trim_end_matches('/');
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
        bail!("etcd URL {url:?}: the name {name:?} must be letters, digits, '-', '_' or '.' (it is the key prefix)");
    }
    let mut endpoints = Vec::new();
    for host in hosts.split(',').filter(|h| !h.is_empty()) {
        let Some((_, port)) = host.rsplit_once(':') else {
            bail!("etcd URL {url:?}: {host:?} needs a port (host:2379)");
        };
        port.parse::<u16>().with_context(|| format!("etcd URL {url:?}: {port:?} is not a port"))?;
        endpoints.push(host.to_string());
    }
    if endpoints.is_empty() {
        bail!("etcd URL {url:?} names no member: etcd://host1:2379,host2:2379/NAME");
    }
    let mut ca = std::env::var_os("ELASTICFS_ETCD_CA").map(Into::into);
    let (mut user, mut password_file) = (None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("ca", path)) => ca = Some(path.into()),
            Some(("user", name)) => user = Some(name.to_string()),
            Some(("password-file", path)) => password_file = Some(path.to_string()),
            Some(("password", _)) => bail!(
                "etcd URL {url:?}: a password never goes in the URL; use password-file=PATH or ELASTICFS_ETCD_PASSWORD"
            ),
            _ => bail!("etcd URL {url:?}: unknown option {pair:?} (known: ca=, user=, password-file=)"),
        }
    }
    let tls_ca = match (tls, ca) {
        (false, _) => None,
        (true, Some(path)) => {
            let path: std::path::PathBuf = path;
            Some(
                std::fs::read(&path)
                    .with_context(|| format!("reading the etcd CA certificate {}", path.display()))?,
            )
        }
        (true, None) => bail!(
            "etcd URL {url:?} asks for TLS but names no CA: add ?ca=/path/to/ca.pem or set ELASTICFS_ETCD_CA"
        ),
    };
    let user = match user {
        None => None,
        Some(name) => Some((name, password(url, password_file.as_deref())?)),
    };
    Ok(EtcdOptions { endpoints, name: name.to_string(), tls_ca, user, give_up_after: None })
}

fn password(url: &str, file: Option<&str>) -> Result<String> {
    if let Some(file) = file {
        let text = std::fs::read_to_string(Path::new(file))
            .with_context(|| format!("reading the etcd password file {file}"))?;
        return Ok(text.trim_end().to_string());
    }
    std::env::var("ELASTICFS_ETCD_PASSWORD").map_err(|_| {
        anyhow::anyhow!("etcd URL {url:?} names a user but no password: use password-file=PATH or ELASTICFS_ETCD_PASSWORD")
    })
}

/// How long a session lives without a heartbeat: a client that dies loses its locks (and the
/// files it held open after unlinking them) this long after. `ELASTICFS_SESSION_LEASE` (seconds)
/// changes it.
pub fn session_lease() -> Duration {
    let secs = std::env::var("ELASTICFS_SESSION_LEASE").ok().and_then(|s| s.parse().ok()).unwrap_or(20.0f64);
    Duration::from_secs_f64(secs.max(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_name_and_options_are_read_and_bad_forms_refused() {
        let o = parse("etcd://a:1,b:2/fs1", false, "a:1,b:2/fs1").unwrap();
        assert_eq!(
            (o.endpoints, o.name.as_str(), o.tls_ca, o.user),
            (vec!["a:1".into(), "b:2".into()], "fs1", None, None)
        );
        for bad in ["a:1", "a:1/", "a/fs", "a:1/f s", "a:x/fs", "a:1/fs?password=x", "a:1/fs?nope=1"] {
            assert!(parse(bad, false, bad).is_err(), "{bad}");
        }
        let err = parse("etcds://a:1/fs", true, "a:1/fs").unwrap_err().to_string();
        assert!(err.contains("ca="), "{err}");
    }
}
