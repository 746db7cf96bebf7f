//! `flood`: many connections from one address, one after the other, each
//! classified by its first line: greeted (kept open or closed at once) or
//! busy (then the server must close it).

use std::io::{self, BufRead, BufReader, ErrorKind, Read};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Instant;

use crate::{say, READ_TIMEOUT};

/// First lines that mean "busy, closing".
const BUSY: [&str; 2] = ["421 ", "* BYE"];
/// First lines of a greeting.
const GREETED: [&str; 2] = ["220 ", "* OK"];

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let addr: SocketAddr = crate::parse(args, 0, "ADDR")?;
    let n: usize = crate::parse(args, 1, "N")?;
    let hold = match args.get(2).map(String::as_str) {
        Some("hold") => true,
        Some("close") => false,
        _ => return Err("third argument: hold or close".into()),
    };
    let side: Option<IpAddr> = match args.get(3) {
        Some(a) => Some(
            a.strip_prefix("side=")
                .ok_or("fourth argument: side=IP")?
                .parse()
                .map_err(|e| format!("side: {e}"))?,
        ),
        None => None,
    };
    let mut held = Vec::new();
    let (mut greeted, mut busy, mut busy_closed, mut other) = (0, 0, 0, 0);
    let mut busy_ms = Vec::new();
    let mut first_busy = String::new();
    let mut side_report = "side=none".to_owned();
    for i in 0..n {
        if i == n / 2 {
            if let Some(ip) = side {
                side_report = side_client(ip, addr);
            }
        }
        let started = Instant::now();
        let Ok(stream) = TcpStream::connect_timeout(&addr, READ_TIMEOUT) else {
            other += 1;
            continue;
        };
        let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
        let mut reader = BufReader::new(&stream);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        if GREETED.iter().any(|p| line.starts_with(p)) {
            greeted += 1;
            if hold {
                held.push(stream);
            }
        } else if BUSY.iter().any(|p| line.starts_with(p)) {
            busy += 1;
            if first_busy.is_empty() {
                first_busy = line.trim_end().to_owned();
            }
            // The server closes it: end of input (or a reset) follows.
            let mut rest = Vec::new();
            let closed = match reader.read_to_end(&mut rest) {
                Ok(_) => true,
                Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            };
            if closed && rest.is_empty() {
                busy_closed += 1;
                busy_ms.push(started.elapsed().as_secs_f64() * 1000.0);
            }
        } else {
            other += 1;
        }
    }
    busy_ms.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        busy_ms
            .get(((busy_ms.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    say(&format!(
        "flood greeted={greeted} busy={busy} busy_closed={busy_closed} other={other} \
         busy_closed_ms_p50={:.2} busy_closed_ms_p99={:.2} busy_closed_ms_max={:.2} {side_report}",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    ));
    say(&format!("flood-busy-line {first_busy}"));
    // Keep the held connections until told.
    for line in io::stdin().lock().lines() {
        match line.as_deref() {
            Ok("exit") | Err(_) => break,
            Ok(_) => {}
        }
    }
    drop(held);
    Ok(())
}

/// One client from another address: connect, read the first line, close.
fn side_client(ip: IpAddr, addr: SocketAddr) -> String {
    let started = Instant::now();
    let result = (|| -> io::Result<String> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )?;
        socket.bind(&SocketAddr::new(ip, 0).into())?;
        socket.connect_timeout(&addr.into(), READ_TIMEOUT)?;
        let stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line)?;
        Ok(line)
    })();
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    match result {
        Ok(line) => format!(
            "side_greeted={} side_ms={ms:.2}",
            u8::from(GREETED.iter().any(|p| line.starts_with(p)))
        ),
        Err(e) => format!(
            "side_greeted=0 side_ms={ms:.2} side_error={:?}",
            e.to_string()
        ),
    }
}
