//! Arbitrary bytes against the SMTP session.

use super::*;
use proptest::prelude::*;

fn fragment() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"EHLO x\r\n".to_vec()),
        Just(b"HELO x\n".to_vec()),
        Just(b"MAIL FROM:<a@b>\r\n".to_vec()),
        Just(b"MAIL FROM:<a@b> SIZE=99999999999\r\n".to_vec()),
        Just(b"RCPT TO:<c@d>\r\n".to_vec()),
        Just(b"DATA\r\n".to_vec()),
        Just(b"hello\r\n".to_vec()),
        Just(b"..stuffed\r\n".to_vec()),
        Just(b".\r\n".to_vec()),
        Just(b"\n.\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\0".to_vec()),
        Just(b"RSET\r\n".to_vec()),
        Just(b"NOOP\r\n".to_vec()),
        Just(vec![b'x'; 1500]),
        proptest::collection::vec(any::<u8>(), 0..300),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever the bytes, the session ends when the client does, and
    /// the spool holds exactly the messages answered with 250.
    #[test]
    fn any_bytes_leave_only_acknowledged_messages(
        parts in proptest::collection::vec(fragment(), 0..60)
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let s = Setup::new();
            let (client, server) = tokio::io::duplex(16 * 1024);
            let task = tokio::spawn(serve_smtp(server, "fuzz".into(), s.phases.handle(), Arc::new(s.ctx().max_message_size(4096))));
            let (mut rd, mut wr) = tokio::io::split(client);
            let input: Vec<u8> = parts.concat();
            let writer = tokio::spawn(async move {
                let _ = wr.write_all(&input).await;
                let _ = wr.shutdown().await;
            });
            let mut output = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(30), rd.read_to_end(&mut output)).await;
            assert!(read.is_ok(), "the session did not end");
            writer.await.unwrap();
            task.await.unwrap();
            let text = String::from_utf8_lossy(&output);
            let acknowledged = text.matches("250 2.0.0 ok: queued as").count();
            assert_eq!(s.messages().len(), acknowledged, "{text}");
            assert_eq!(s.tmp_files(), 0);
        });
    }
}
