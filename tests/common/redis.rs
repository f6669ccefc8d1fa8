//! A `redis-server` per test (tests/cluster.rs, tests/deploy.rs): scripts/test.sh installs
//! Debian's when it is missing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(5);

/// A `redis-server` of the test's own on a free port, with its data in a directory of its
/// own (append-only file, fsync on every write: a SIGKILL loses nothing), stopped on drop.
pub struct Redis {
    child: Child,
    pub port: u16,
    dir: PathBuf,
    /// Append-only file fsynced on every write (nothing lost to a SIGKILL); else only
    /// the snapshots the test makes with SAVE.
    aof: bool,
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_with(true)
    }

    pub fn start_with(aof: bool) -> Redis {
        let port = super::free_port();
        let dir =
            std::env::temp_dir().join(format!("roomcast-redis-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Redis::launch(port, dir, aof)
    }

    pub fn launch(port: u16, dir: PathBuf, aof: bool) -> Redis {
        let persistence = if aof {
            ["--appendonly", "yes", "--appendfsync", "always"]
        } else {
            ["--appendonly", "no", "--appendfsync", "no"]
        };
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(persistence)
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/test.sh installs it)");
        let r = Redis {
            child,
            port,
            dir,
            aof,
        };
        let deadline = Instant::now() + WAIT;
        while r.command(&["PING"]).as_deref() != Some("+PONG") {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it with SIGKILL (no shutdown, no save).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port and data.
    pub fn restart(&mut self) {
        let again = Redis::launch(self.port, self.dir.clone(), self.aof);
        let old = std::mem::replace(self, again);
        std::mem::forget(old);
    }

    /// One inline command; the first line of the reply (None if Redis is not there).
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(WAIT)).ok()?;
        s.write_all(format!("{}\r\n", args.join(" ")).as_bytes())
            .ok()?;
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).ok()?;
        let text = String::from_utf8_lossy(&buf[..n]);
        Some(text.lines().next()?.to_owned())
    }

    /// Kills the connection `name` (what the backplane named it with CLIENT SETNAME).
    pub fn kill_client(&self, name: &str) {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "CLIENT", "LIST"])
            .output()
            .unwrap();
        let list = String::from_utf8_lossy(&out.stdout);
        let line = list
            .lines()
            .find(|l| l.contains(&format!(" name={name} ")))
            .unwrap_or_else(|| panic!("no client {name} in {list}"));
        let id = line
            .split_whitespace()
            .next()
            .unwrap()
            .trim_start_matches("id=");
        assert_eq!(
            self.command(&["CLIENT", "KILL", "ID", id]).as_deref(),
            Some(":1")
        );
    }

    /// How many keys match `pattern`.
    pub fn count_keys(&self, pattern: &str) -> usize {
        let reply = self.command(&["KEYS", pattern]).unwrap();
        reply.trim_start_matches('*').parse().unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
