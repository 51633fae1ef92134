//! What the metadata service does with bad input: wrong tokens, other protocol versions,
//! truncated, oversized and random frames. It answers with an error or drops that connection,
//! and keeps serving everyone else. Also TLS, and the CLI's errors for each case.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use elasticfs_metadata::remote::wire::{self, Hello, Request, SessionRequest, Welcome};
use elasticfs_metadata::{MetaResult, Usage};
use elasticfs_tests::{elasticfs, elasticfs_fails, pattern, MetaService};

fn connect(service: &MetaService) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", service.port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stream
}

fn send(stream: &mut TcpStream, id: u64, payload: &[u8]) {
    let mut frame = ((payload.len() + 8) as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&id.to_le_bytes());
    frame.extend_from_slice(payload);
    stream.write_all(&frame).unwrap();
}

/// The next frame's payload, or `None` once the service has closed the connection.
fn receive(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut header = [0u8; 12];
    stream.read_exact(&mut header).ok()?;
    let len = u32::from_le_bytes(header[..4].try_into().unwrap()) as usize;
    let mut payload = vec![0u8; len - 8];
    stream.read_exact(&mut payload).ok()?;
    Some(payload)
}

/// Whether the service has closed the connection: end of stream or a reset. A read that
/// times out (the service still holding the connection open) is not.
fn closed(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

fn hello(token: &[u8]) -> Vec<u8> {
    wire::encode_hello(&Hello { token: Some(token.to_vec()), session: SessionRequest::None })
}

fn refusal(stream: &mut TcpStream) -> String {
    match postcard::from_bytes(&receive(stream).expect("an answer")).unwrap() {
        Welcome::Refused(reason) => reason,
        Welcome::Accepted { .. } => panic!("accepted"),
    }
}

#[test]
fn bad_input_gets_an_error_or_a_dropped_connection_and_the_service_serves_on() {
    let mut service = MetaService::start("5s");
    let meta = service.url();
    let token = service.token_file().display().to_string();
    let env = [("ELASTICFS_TOKEN_FILE", token.as_str())];
    elasticfs(&["format", "--meta", &meta, "--storage", "memory"], &env);

    // A wrong token is refused, and logged.
    let mut s = connect(&service);
    send(&mut s, 0, &hello(b"not-the-token"));
    assert!(refusal(&mut s).contains("token"));
    assert!(service.log().contains("wrong or missing token"));
    std::fs::write(service.dir.path().join("wrong"), "wrong").unwrap();
    let wrong = service.dir.path().join("wrong").display().to_string();
    let err = elasticfs_fails(&["status", "--meta", &meta], &[("ELASTICFS_TOKEN_FILE", &wrong)]);
    assert!(err.contains("refused") && err.contains("token"), "{err}");

    // Another protocol version is named in the refusal.
    let mut s = connect(&service);
    let mut other = hello(b"a-test-token");
    other[4..8].copy_from_slice(&99u32.to_le_bytes());
    send(&mut s, 0, &other);
    let reason = refusal(&mut s);
    assert!(reason.contains("version 99"), "{reason}");

    // Truncated: a frame that promises more than it sends, then hangs up.
    let mut s = connect(&service);
    s.write_all(&100u32.to_le_bytes()).unwrap();
    s.write_all(&[1, 2, 3]).unwrap();
    drop(s);
    // Oversized: dropped without reading it.
    let mut s = connect(&service);
    s.write_all(&u32::MAX.to_le_bytes()).unwrap();
    assert!(closed(&mut s));
    // Random bytes instead of a hello.
    let mut s = connect(&service);
    let _ = s.write_all(&pattern(5, 4096));
    assert!(closed(&mut s));

    // After a good hello: a malformed request gets an error reply and the connection lives on.
    let mut s = connect(&service);
    send(&mut s, 0, &hello(b"a-test-token"));
    assert!(matches!(postcard::from_bytes(&receive(&mut s).unwrap()).unwrap(), Welcome::Accepted { .. }));
    send(&mut s, 7, &[0xff; 9]);
    let reply: MetaResult<()> = postcard::from_bytes(&receive(&mut s).unwrap()).unwrap();
    assert!(reply.is_err());
    send(&mut s, 8, &postcard::to_allocvec(&Request::Usage).unwrap());
    let usage: MetaResult<Usage> = postcard::from_bytes(&receive(&mut s).unwrap()).unwrap();
    assert_eq!(usage.unwrap().inodes, 1);
    // Random bytes after the hello: the connection is dropped or answered, never a crash.
    for seed in 0..20 {
        let _ = s.write_all(&pattern(seed, 64 + seed as usize * 31));
    }
    drop(s);

    assert!(service.alive(), "the service died: {}", service.log());
    let status = elasticfs(&["status", "--meta", &meta], &env);
    assert!(status.contains("client sessions 0"), "{status}");
}

#[test]
fn unreachable_service_is_a_clear_error() {
    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let err = elasticfs_fails(&["status", "--meta", &format!("tcp://127.0.0.1:{port}")], &[]);
    assert!(err.contains("cannot reach the metadata service") && err.contains("meta serve"), "{err}");
    let err = elasticfs_fails(&["status", "--meta", "tcp://127.0.0.1"], &[]);
    assert!(err.contains("needs a port"), "{err}");
}

#[test]
fn tls_service_with_a_self_signed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = elasticfs_tests::self_signed_cert(dir.path());
    let service = MetaService::start_with(
        "5s",
        &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()],
    );
    let token = service.token_file().display().to_string();
    let env = [("ELASTICFS_TOKEN_FILE", token.as_str())];
    let tls = format!("tls://127.0.0.1:{}?ca={}", service.port, cert.display());
    elasticfs(&["format", "--meta", &tls, "--storage", "memory"], &env);
    assert!(elasticfs(&["status", "--meta", &tls], &env).contains("client sessions 0"));
    // Plain TCP to a TLS service fails cleanly.
    let err = elasticfs_fails(&["status", "--meta", &service.url()], &env);
    assert!(err.contains("metadata service"), "{err}");
}
