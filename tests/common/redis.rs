//! A real Redis (Debian's redis-server) on a loopback port, no persistence.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Redis {
    child: Child,
    pub port: u16,
    pub url: String,
    dir: PathBuf,
    /// Extra flags (TLS, a password), on every start.
    extra: Vec<String>,
}

impl Redis {
    pub fn start(dir: &Path) -> Redis {
        let port = super::free_port();
        let dir = dir.join(format!("redis-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let child = spawn(&dir, &port_args(port, &[]));
        let redis = Redis {
            child,
            port,
            url: format!("redis://127.0.0.1:{port}/0"),
            dir,
            extra: Vec::new(),
        };
        redis.wait_ready();
        redis
    }

    /// TLS only (the test CA's server certificate, clients not checked),
    /// AUTH required with `password`.
    pub fn start_tls(dir: &Path, ca: &super::TestCa, password: &str) -> Redis {
        let port = super::free_port();
        let dir = dir.join(format!("redis-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let path = |p: &Path| p.to_str().unwrap().to_owned();
        let extra = vec![
            "--tls-cert-file".into(),
            path(&ca.server_cert),
            "--tls-key-file".into(),
            path(&ca.server_key),
            "--tls-ca-cert-file".into(),
            path(&ca.ca),
            "--tls-auth-clients".into(),
            "no".into(),
            "--requirepass".into(),
            password.into(),
        ];
        let child = spawn(&dir, &port_args(port, &extra));
        let redis = Redis {
            child,
            port,
            url: format!("rediss://127.0.0.1:{port}/0"),
            dir,
            extra,
        };
        redis.wait_ready();
        redis
    }

    /// Whether it answers PING (TLS: whether it accepts connections).
    pub fn answers(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        if !self.extra.is_empty() {
            return true;
        }
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    fn wait_ready(&self) {
        let started = Instant::now();
        while !self.answers() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "redis on {} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts again on the same port (empty: no persistence).
    pub fn restart(&mut self) {
        self.child = spawn(&self.dir, &port_args(self.port, &self.extra));
        self.wait_ready();
    }
}

/// `--port P`, or with TLS flags `--port 0 --tls-port P` and them.
fn port_args(port: u16, extra: &[String]) -> Vec<String> {
    let mut args = match extra.is_empty() {
        true => vec!["--port".into(), port.to_string()],
        false => vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
        ],
    };
    args.extend_from_slice(extra);
    args
}

fn spawn(dir: &Path, args: &[String]) -> Child {
    Command::new("redis-server")
        .args(args)
        .args([
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            dir.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server (apt-get install redis-server)")
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill9();
    }
}
