//! `elasticfs meta dump` and `meta load`: a file system's metadata out of one store and into
//! another (sled to etcd and back), as a versioned stream on stdout and stdin.

use std::io::{BufReader, BufWriter, Read, Write};

use anyhow::{bail, Context, Result};
use elasticfs_core::metadata::kv::{EtcdKv, SledKv};
use elasticfs_core::metadata::{Engine, MetaStore, SledStore};
use indicatif::{ProgressBar, ProgressStyle};

use crate::volume::MetaUrl;

fn spinner(what: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner().with_message(what.to_string());
    bar.set_style(ProgressStyle::with_template("{spinner} {msg}: {pos} records").expect("a valid template"));
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

const SERVICE: &str = "a metadata service's store is dumped or loaded directly: stop `elasticfs meta serve` \
     and give --meta sled:///path/to/its/db";

/// Writes the metadata at `url` to `out`.
pub fn dump(url: &str, out: &mut dyn Write) -> Result<()> {
    let bar = spinner("dumping");
    let progress = |n: u64| bar.set_position(n);
    let mut out = BufWriter::with_capacity(1 << 20, out);
    let written = match MetaUrl::parse(url)? {
        MetaUrl::Sled(path) => SledStore::open(&path)?.dump(&mut out, &progress)?,
        MetaUrl::Etcd(options) => Engine::open_kv(EtcdKv::connect(options)?)?.dump(&mut out, &progress)?,
        MetaUrl::Service { .. } => bail!("{SERVICE}"),
    };
    bar.finish_and_clear();
    eprintln!("dumped {written} records from {url}");
    Ok(())
}

/// Loads a dump from `input` into the empty store at `url`.
pub fn load(url: &str, input: &mut dyn Read) -> Result<()> {
    let bar = spinner("loading");
    let progress = |n: u64| bar.set_position(n);
    let mut input = BufReader::with_capacity(1 << 20, input);
    let superblock = match MetaUrl::parse(url)? {
        MetaUrl::Sled(path) => {
            std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
            Engine::load_kv(SledKv::open(&path)?, &mut input, &progress)?.superblock().clone()
        }
        MetaUrl::Etcd(options) => {
            Engine::load_kv(EtcdKv::connect(options)?, &mut input, &progress)?.superblock().clone()
        }
        MetaUrl::Service { .. } => bail!("{SERVICE}"),
    };
    bar.finish_and_clear();
    eprintln!("loaded {} ({}) into {url}", superblock.name, superblock.uuid);
    Ok(())
}
