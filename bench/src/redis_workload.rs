//! `compare`'s `redis` workload: the measured process is Debian's `redis-server`, and the bench
//! drives it from outside the memory limit (its own process, neither under the agent nor in the
//! memory cgroup) over one pipelined TCP connection:
//!
//! 1. wait until it answers PING;
//! 2. load the dataset with plain `SET key:I VALUE` (values of pseudo-random text, 50–150 % of
//!    `value_bytes` long, a deterministic function of the seed and I, so that they can be
//!    checked without being kept);
//! 3. GET random keys and check every value;
//! 4. `BGSAVE` (Redis forks; the child writes the dataset to `dump.rdb` while the parent goes
//!    on) and wait until `INFO persistence` says it finished and succeeded;
//! 5. `SHUTDOWN NOSAVE`.
//!
//! The figure is the server's whole life, from its start to its exit (compare times it).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use rand::{Rng, RngCore, SeedableRng};
use yonder_tests::KillOnDrop;

/// Seed of the values and of the GETs' keys.
pub const SEED: u64 = 0x0072_6564_6973;

/// Commands sent before their replies are read.
const BATCH: u64 = 1000;

/// How long the server may take to answer its first PING.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The size of the Redis workload.
#[derive(Debug, Clone)]
pub struct Config {
    /// Bytes of values loaded (keys and Redis's own overhead come on top).
    pub dataset: u64,
    /// Mean length of a value in bytes (each is 50–150 % of it).
    pub value_bytes: u64,
    /// Random GETs after the load (None: as many as keys).
    pub gets: Option<u64>,
    /// Seed of the values and the GETs' keys.
    pub seed: u64,
}

impl Config {
    /// Keys loaded.
    pub fn keys(&self) -> u64 {
        (self.dataset / self.value_bytes.max(1)).max(1)
    }

    /// Random GETs made.
    pub fn gets(&self) -> u64 {
        self.gets.unwrap_or_else(|| self.keys())
    }

    /// The value of `key:i`: printable pseudo-random text (64 symbols, so about 6 bits of
    /// entropy a byte: a page of it hardly compresses).
    pub fn value(&self, i: u64) -> Vec<u8> {
        const SYMBOLS: &[u8; 64] =
            b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .";
        let mut rng =
            rand::rngs::StdRng::seed_from_u64(self.seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let half = (self.value_bytes / 2).max(1);
        let len = rng.random_range(half..=3 * half) as usize;
        let mut v = vec![0; len];
        rng.fill_bytes(&mut v);
        for b in &mut v {
            *b = SYMBOLS[usize::from(*b & 63)];
        }
        v
    }
}

/// `redis-server`'s command line for one run: loopback only, on `port`, no persistence of its
/// own (`--save ""`, `--appendonly no`), `dump.rdb` in `dir`, in the foreground.
pub fn server_argv(port: u16, dir: &Path) -> Vec<String> {
    [
        "redis-server",
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--dir",
        &dir.display().to_string(),
        "--dbfilename",
        "dump.rdb",
        "--loglevel",
        "warning",
    ]
    .map(String::from)
    .into()
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding a loopback port")?;
    Ok(l.local_addr()?.port())
}

/// Shared between a run and its driver: the run sets `stop` when the server exited, timed out or
/// Ctrl-C came (the driver then gives up at its next read or write), and the driver puts the
/// server's PID in `server` as soon as it knows it (the run kills it on every failure path).
#[derive(Default)]
pub struct Control {
    /// Set by the run: give up.
    pub stop: AtomicBool,
    /// The server process, killed by PID when dropped (unless it ended).
    pub server: Mutex<Option<KillOnDrop>>,
}

impl Control {
    /// SIGKILLs the server, if the driver found it and it still runs.
    pub fn kill_server(&self) {
        drop(self.server.lock().unwrap_or_else(|e| e.into_inner()).take());
    }
}

/// One connection whose reads and writes give up once `stop` is set.
struct Conn<'a> {
    reader: BufReader<Patient<'a>>,
    writer: Patient<'a>,
}

/// A socket that waits as long as it takes, but checks `stop` every 200 ms.
struct Patient<'a> {
    socket: TcpStream,
    stop: &'a AtomicBool,
}

impl Patient<'_> {
    fn check(&self, e: std::io::Error) -> std::io::Result<()> {
        match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                if !self.stop.load(Ordering::Relaxed) =>
            {
                Ok(())
            }
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => Err(
                std::io::Error::other("stopped: the server exited, timed out or was interrupted"),
            ),
            std::io::ErrorKind::Interrupted => Ok(()),
            _ => Err(e),
        }
    }
}

impl Read for Patient<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.socket.read(buf) {
                Err(e) => self.check(e)?,
                ok => return ok,
            }
        }
    }
}

impl Write for Patient<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        loop {
            match self.socket.write(buf) {
                Err(e) => self.check(e)?,
                ok => return ok,
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A reply of the server.
#[derive(Debug, PartialEq)]
enum Reply {
    /// `+OK` and the like.
    Status(String),
    /// `-ERR ...`.
    Error(String),
    /// `:N`.
    Integer(i64),
    /// `$N` and its bytes, or nil.
    Bulk(Option<Vec<u8>>),
}

impl<'a> Conn<'a> {
    fn open(port: u16, stop: &'a AtomicBool) -> std::io::Result<Self> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let socket = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        socket.set_nodelay(true)?;
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        socket.set_write_timeout(Some(Duration::from_millis(200)))?;
        let other = socket.try_clone()?;
        Ok(Self {
            reader: BufReader::with_capacity(1 << 16, Patient { socket, stop }),
            writer: Patient {
                socket: other,
                stop,
            },
        })
    }

    fn send(&mut self, commands: &[u8]) -> anyhow::Result<()> {
        self.writer
            .write_all(commands)
            .context("sending to redis-server")
    }

    fn reply(&mut self) -> anyhow::Result<Reply> {
        let mut line = Vec::new();
        self.reader
            .read_until(b'\n', &mut line)
            .context("reading from redis-server")?;
        if line.is_empty() {
            bail!("redis-server closed the connection");
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        let mut chars = text.chars();
        let kind = chars.next();
        let rest = chars.as_str();
        Ok(match kind {
            Some('+') => Reply::Status(rest.into()),
            Some('-') => Reply::Error(rest.into()),
            Some(':') => Reply::Integer(rest.parse().with_context(|| format!("reply {text:?}"))?),
            Some('$') => {
                let len: i64 = rest.parse().with_context(|| format!("reply {text:?}"))?;
                if len < 0 {
                    Reply::Bulk(None)
                } else {
                    let mut v = vec![0; len as usize + 2];
                    self.reader
                        .read_exact(&mut v)
                        .context("reading from redis-server")?;
                    v.truncate(len as usize);
                    Reply::Bulk(Some(v))
                }
            }
            _ => bail!("unexpected reply from redis-server: {text:?}"),
        })
    }

    /// Sends one command and reads its reply.
    fn call(&mut self, args: &[&[u8]]) -> anyhow::Result<Reply> {
        let mut c = Vec::new();
        command(&mut c, args);
        self.send(&c)?;
        self.reply()
    }

    /// `INFO section` as its `field:value` lines.
    fn info(&mut self, section: &str) -> anyhow::Result<Vec<(String, String)>> {
        match self.call(&[b"INFO", section.as_bytes()])? {
            Reply::Bulk(Some(b)) => Ok(String::from_utf8_lossy(&b)
                .lines()
                .filter_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    Some((k.to_string(), v.trim().to_string()))
                })
                .collect()),
            r => bail!("INFO {section}: {r:?}"),
        }
    }
}

/// Appends a command in RESP to `out`.
fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

fn field<'a>(info: &'a [(String, String)], key: &str) -> anyhow::Result<&'a str> {
    info.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .with_context(|| format!("no {key} in INFO"))
}

/// Drives the server on `port` through the whole workload (see the module's doc); `dir` is its
/// `--dir`. Returns a one-line summary. Gives up when `control.stop` is set.
pub fn drive(config: &Config, port: u16, dir: &Path, control: &Control) -> anyhow::Result<String> {
    let stop = &control.stop;
    // 1. PING.
    let started = Instant::now();
    let mut conn = loop {
        if stop.load(Ordering::Relaxed) {
            bail!("redis-server exited (or the run stopped) before it answered PING");
        }
        if started.elapsed() > START_TIMEOUT {
            bail!("redis-server did not answer PING within {START_TIMEOUT:?}");
        }
        if let Ok(mut c) = Conn::open(port, stop) {
            if c.call(&[b"PING"]).ok() == Some(Reply::Status("PONG".into())) {
                break c;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let ping = started.elapsed();
    let info = conn.info("server")?;
    let pid: u32 = field(&info, "process_id")?.parse()?;
    *control.server.lock().unwrap_or_else(|e| e.into_inner()) = Some(KillOnDrop::new(pid));

    // 2. The dataset.
    let keys = config.keys();
    let mut batch = Vec::new();
    let mut first = 0;
    while first < keys {
        let end = (first + BATCH).min(keys);
        batch.clear();
        for i in first..end {
            command(
                &mut batch,
                &[b"SET", format!("key:{i}").as_bytes(), &config.value(i)],
            );
        }
        conn.send(&batch)?;
        for i in first..end {
            match conn.reply()? {
                Reply::Status(s) if s == "OK" => {}
                r => bail!("SET key:{i}: {r:?}"),
            }
        }
        first = end;
    }
    match conn.call(&[b"DBSIZE"])? {
        Reply::Integer(n) if n as u64 == keys => {}
        r => bail!("DBSIZE after loading {keys} keys: {r:?}"),
    }

    let loaded = started.elapsed();

    // 3. Random GETs, every value checked.
    let gets = config.gets();
    let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed.rotate_left(17));
    let mut done = 0;
    let mut asked = Vec::with_capacity(BATCH as usize);
    while done < gets {
        let n = BATCH.min(gets - done);
        batch.clear();
        asked.clear();
        for _ in 0..n {
            let i = rng.random_range(0..keys);
            asked.push(i);
            command(&mut batch, &[b"GET", format!("key:{i}").as_bytes()]);
        }
        conn.send(&batch)?;
        for &i in &asked {
            match conn.reply()? {
                Reply::Bulk(Some(v)) if v == config.value(i) => {}
                Reply::Bulk(Some(v)) => bail!(
                    "GET key:{i}: a wrong value ({} bytes, {:?}...)",
                    v.len(),
                    String::from_utf8_lossy(&v[..v.len().min(16)])
                ),
                r => bail!("GET key:{i}: {r:?}"),
            }
        }
        done += n;
    }

    let got = started.elapsed();

    // 4. BGSAVE, and wait until it is over. BGSAVE forks before it replies, so from here on
    // rdb_bgsave_in_progress is 1 until the child is done.
    match conn.call(&[b"BGSAVE"])? {
        Reply::Status(s) if s.starts_with("Background saving started") => {}
        r => bail!("BGSAVE: {r:?}"),
    }
    loop {
        let info = conn.info("persistence")?;
        if field(&info, "rdb_bgsave_in_progress")? == "0" {
            let status = field(&info, "rdb_last_bgsave_status")?;
            let changes = field(&info, "rdb_changes_since_last_save")?;
            anyhow::ensure!(
                status == "ok" && changes == "0",
                "BGSAVE failed: rdb_last_bgsave_status:{status}, \
                 rdb_changes_since_last_save:{changes}"
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let rdb: PathBuf = dir.join("dump.rdb");
    let rdb_bytes = std::fs::metadata(&rdb)
        .with_context(|| format!("BGSAVE wrote no {}", rdb.display()))?
        .len();
    anyhow::ensure!(rdb_bytes > 0, "BGSAVE wrote an empty {}", rdb.display());
    let saved = started.elapsed();

    // 5. SHUTDOWN NOSAVE: the server closes the connection and exits (no reply on success).
    match conn.call(&[b"SHUTDOWN", b"NOSAVE"]) {
        Ok(Reply::Error(e)) => bail!("SHUTDOWN NOSAVE: {e}"),
        Ok(r) => bail!("SHUTDOWN NOSAVE: unexpected reply {r:?}"),
        Err(_) => {} // The connection closed: the server is going.
    }
    let secs = |d: Duration| d.as_secs_f64();
    Ok(format!(
        "redis: {keys} keys SET, {gets} random GETs checked, BGSAVE wrote {:.1} MiB; \
         phases from the first PING: answered {:.2} s, loaded {:.2} s, GETs done {:.2} s, \
         saved {:.2} s",
        rdb_bytes as f64 / (1 << 20) as f64,
        secs(ping),
        secs(loaded),
        secs(got),
        secs(saved),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_deterministic_text_around_the_mean_length() {
        let c = Config {
            dataset: 1 << 20,
            value_bytes: 400,
            gets: None,
            seed: SEED,
        };
        assert_eq!(c.keys(), (1 << 20) / 400);
        assert_eq!(c.gets(), c.keys());
        let v = c.value(7);
        assert_eq!(v, c.value(7));
        assert_ne!(v, c.value(8));
        assert!((200..=600).contains(&v.len()), "{}", v.len());
        assert!(v.iter().all(|b| b.is_ascii_graphic() || *b == b' '));
        let mean = (0..1000).map(|i| c.value(i).len()).sum::<usize>() / 1000;
        assert!((350..=450).contains(&mean), "{mean}");
    }

    #[test]
    fn commands_are_resp() {
        let mut out = Vec::new();
        command(&mut out, &[b"SET", b"k", b"v"]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n");
    }
}
