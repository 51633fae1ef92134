//! NFSv4.1 from user space for benches/nfs_vs_fuse.sh, through the `nfs-rs` client: a file
//! copied in or read out in 1 MiB calls with several in flight, or empty files created one
//! after another (OPEN with create, then CLOSE, as `touch` over a kernel client sends).
//!
//!   nfs41_io put PORT SOURCE NAME [IN_FLIGHT]   (4 calls in flight by default; COMMIT at the end)
//!   nfs41_io get PORT NAME [IN_FLIGHT]          (reads the whole file, prints its byte count)
//!   nfs41_io creates PORT DIR COUNT             (makes DIR, then COUNT files in it)

use std::io::Read;

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use nfs_rs::Mount;

const IO: usize = 1 << 20;

async fn mount(port: &str) -> Box<dyn Mount> {
    let url = format!("nfs://127.0.0.1/?version=4.1&nfsport={port}&noresvport=true&uid=0&gid=0");
    nfs_rs::parse_url_and_mount(&url).await.expect("NFSv4.1 mount")
}

#[tokio::main]
async fn main() -> nfs_rs::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let in_flight = |at: usize| args.get(at).map_or(4, |n| n.parse().expect("IN_FLIGHT"));
    match args.get(1).map(String::as_str) {
        Some("put") => {
            let m = mount(&args[2]).await;
            let mut source = std::fs::File::open(&args[3]).expect("SOURCE");
            let made = m.create_path(&format!("/{}", args[4]), Some(0o644)).await?;
            let io = IO.min(m.get_max_write_size() as usize);
            let chunks = std::iter::from_fn(|| {
                let mut buf = vec![0u8; io];
                let n = source.read(&mut buf).expect("read SOURCE");
                buf.truncate(n);
                (n > 0).then_some(Bytes::from(buf))
            });
            let (m, fh) = (m.as_ref(), made.fh.clone());
            stream::iter(chunks.enumerate())
                .map(|(i, data)| m.write(fh.clone(), (i * io) as u64, data))
                .buffer_unordered(in_flight(5))
                .try_collect::<Vec<_>>()
                .await?;
            m.commit(made.fh, 0, 0).await?;
        }
        Some("get") => {
            let m = mount(&args[2]).await;
            let fh = m.lookup_path(&format!("/{}", args[3])).await?.fh;
            let size = m.getattr(fh.clone()).await?.filesize;
            let io = IO.min(m.get_max_read_size() as usize) as u64;
            let m = m.as_ref();
            let total: usize = stream::iter((0..size.div_ceil(io)).map(|i| i * io))
                .map(|offset| m.read(fh.clone(), offset, io as u32))
                .buffer_unordered(in_flight(4))
                .map_ok(|data| data.len())
                .try_fold(0, |sum, n| async move { Ok(sum + n) })
                .await?;
            assert_eq!(total as u64, size, "read less than the file");
            println!("{total}");
        }
        Some("creates") => {
            let m = mount(&args[2]).await;
            m.mkdir_path(&format!("/{}", args[3]), 0o755).await?;
            for i in 0..args[4].parse::<u32>().expect("COUNT") {
                let file = m.create_path_stateful(&format!("/{}/f{i:06}", args[3]), Some(0o644)).await?;
                m.close_stateful(file).await?;
            }
        }
        _ => panic!("usage: nfs41_io put|get|creates ..."),
    }
    Ok(())
}
