//! Test certificates made with the openssl CLI: a CA and the server and
//! client certificates it signs, in one directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::require;

/// Extensions of a server certificate for localhost and 127.0.0.1.
pub const SERVER_EXT: &str = "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n";

/// Extensions of a client certificate (X.509 v3: webpki refuses v1 ones).
pub const CLIENT_EXT: &str = "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n";

/// The key algorithm of the certificates made.
#[derive(Clone, Copy, Debug)]
pub enum KeyType {
    /// ECDSA on P-256 (fast to make).
    Ec,
    /// RSA 2048 (for the `*_RSA_*` cipher suites).
    Rsa,
}

impl KeyType {
    fn args(self) -> &'static [&'static str] {
        match self {
            KeyType::Ec => &[
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
            ],
            KeyType::Rsa => &["-newkey", "rsa:2048", "-nodes"],
        }
    }
}

/// Run `openssl args` in `dir`; panics with its error output on failure.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new(require("openssl"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test CA: its certificate and key files in `dir`.
pub struct Ca {
    dir: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    kind: KeyType,
}

impl Ca {
    /// Make a self-signed CA `<stem>.key` and `<stem>.<ext>` (e.g. `pem`).
    pub fn new(dir: &Path, stem: &str, ext: &str, subject: &str, kind: KeyType) -> Ca {
        let (key, cert) = (format!("{stem}.key"), format!("{stem}.{ext}"));
        let mut args = vec!["req", "-x509"];
        args.extend(kind.args());
        args.extend([
            "-keyout",
            &key,
            "-out",
            &cert,
            "-days",
            "2",
            "-subj",
            subject,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(dir, &args);
        Ca::open(dir, stem, ext, kind)
    }

    /// A CA made earlier in `dir` by [`Ca::new`].
    pub fn open(dir: &Path, stem: &str, ext: &str, kind: KeyType) -> Ca {
        Ca {
            dir: dir.to_path_buf(),
            cert: dir.join(format!("{stem}.{ext}")),
            key: dir.join(format!("{stem}.key")),
            kind,
        }
    }

    /// Sign a new key `key_file` into certificate `cert_file` (both in the
    /// CA's dir) for `subject` with `extensions` (an openssl extfile);
    /// `serial` or a serial file next to the CA. Returns (cert, key).
    pub fn issue(
        &self,
        key_file: &str,
        cert_file: &str,
        subject: &str,
        extensions: &str,
        serial: Option<&str>,
    ) -> (PathBuf, PathBuf) {
        let csr = format!("{cert_file}.csr");
        let ext = format!("{cert_file}.ext");
        std::fs::write(self.dir.join(&ext), extensions).unwrap();
        let mut args = vec!["req"];
        args.extend(self.kind.args());
        args.extend(["-keyout", key_file, "-out", &csr, "-subj", subject]);
        openssl(&self.dir, &args);
        let (ca_cert, ca_key) = (self.cert.to_str().unwrap(), self.key.to_str().unwrap());
        let mut args = vec![
            "x509", "-req", "-in", &csr, "-CA", ca_cert, "-CAkey", ca_key,
        ];
        match serial {
            Some(s) => args.extend(["-set_serial", s]),
            None => args.push("-CAcreateserial"),
        }
        args.extend(["-out", cert_file, "-days", "2", "-extfile", &ext]);
        openssl(&self.dir, &args);
        (self.dir.join(cert_file), self.dir.join(key_file))
    }
}

/// A test CA and a server certificate for localhost/127.0.0.1 it signed.
pub struct Certs {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A CA (`ca.pem`) and a server certificate (`leaf.pem`, `leaf.key`) for
/// localhost and 127.0.0.1 in `dir`, EC keys.
pub fn make_certs(dir: &Path) -> Certs {
    let ca = Ca::new(dir, "ca", "pem", "/CN=vitals test CA", KeyType::Ec);
    let (cert, key) = ca.issue("leaf.key", "leaf.pem", "/CN=localhost", SERVER_EXT, None);
    Certs {
        ca: ca.cert,
        cert,
        key,
    }
}
