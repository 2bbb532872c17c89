//! `THESPIAN_RESOLVE`: maps the `service_address`/`service_port` pairs of a config to local endpoints.
//!
//! Format: `NAME:PORT=HOST:PORT[,HOST:PORT...][;NAME:PORT=...]`, e.g.
//! `gilbert:80=127.0.0.1:41001,127.0.0.1:41002;yorick:80=127.0.0.1:41003`. A config written for ECS
//! Service Connect (`http://gilbert`, port `80`) then runs unchanged on one machine; calls spread
//! round-robin over the endpoints. Names match case-insensitively; empty entries (a trailing `;`) are
//! ignored.

use std::collections::HashMap;

/// A parsed `THESPIAN_RESOLVE`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResolveMap {
    entries: HashMap<(String, u16), Vec<String>>,
}

/// A malformed `THESPIAN_RESOLVE` entry.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("entry \"{entry}\": {message}")]
pub struct ResolveError {
    pub entry: String,
    pub message: String,
}

impl ResolveMap {
    pub fn parse(text: &str) -> Result<ResolveMap, ResolveError> {
        let mut entries = HashMap::new();
        for entry in text.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let err = |message: String| ResolveError {
                entry: entry.to_owned(),
                message,
            };
            let Some((key, endpoints)) = entry.split_once('=') else {
                return Err(err("expected NAME:PORT=HOST:PORT[,HOST:PORT...]".into()));
            };
            let (name, port) = split_host_port(key.trim()).map_err(|m| err(format!("before '=': {m}")))?;
            let name = name.to_ascii_lowercase();
            let mut list = Vec::new();
            for endpoint in endpoints.split(',').map(str::trim) {
                if endpoint.is_empty() {
                    return Err(err(
                        "empty endpoint (expected HOST:PORT after '=' and each ',')".into()
                    ));
                }
                split_host_port(endpoint).map_err(|m| err(format!("endpoint \"{endpoint}\": {m}")))?;
                list.push(endpoint.to_owned());
            }
            if entries.insert((name.clone(), port), list).is_some() {
                return Err(err(format!("{name}:{port} is mapped twice")));
            }
        }
        Ok(ResolveMap { entries })
    }

    /// The endpoints (`HOST:PORT`) that `host`:`port` resolves to, if mapped.
    pub fn lookup(&self, host: &str, port: u16) -> Option<&[String]> {
        self.entries
            .get(&(host.to_ascii_lowercase(), port))
            .map(Vec::as_slice)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// `HOST:PORT` with a non-empty host (IPv6 in brackets) and a port in 1..=65535.
fn split_host_port(text: &str) -> Result<(&str, u16), String> {
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("\"{text}\" has no :PORT"));
    };
    if host.is_empty() {
        return Err(format!("\"{text}\" has no host"));
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(format!(
            "\"{text}\": write IPv6 addresses in brackets, e.g. [::1]:41001"
        ));
    }
    if host.contains([' ', '/', '=', ',', ';']) {
        return Err(format!("\"{host}\" is not a host name or address"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok((host, p)),
        _ => Err(format!("port \"{port}\" is not a number between 1 and 65535")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_format() {
        let map = ResolveMap::parse("gilbert:80=127.0.0.1:41001, 127.0.0.1:41002;Yorick:80=[::1]:41003;")
            .expect("parses");
        assert_eq!(
            map.lookup("gilbert", 80),
            Some(&["127.0.0.1:41001".to_owned(), "127.0.0.1:41002".to_owned()][..])
        );
        assert_eq!(map.lookup("YORICK", 80), Some(&["[::1]:41003".to_owned()][..]));
        assert_eq!(map.lookup("gilbert", 81), None);
        assert!(ResolveMap::parse("").expect("empty is fine").is_empty());
    }

    #[test]
    fn rejects_malformed_entries_naming_them() {
        let cases = [
            ("gilbert:80", "expected NAME:PORT=HOST:PORT"),
            ("gilbert=127.0.0.1:1", "has no :PORT"),
            ("gilbert:x=127.0.0.1:1", "port \"x\""),
            ("gilbert:80=", "empty endpoint"),
            ("gilbert:80=127.0.0.1:1,", "empty endpoint"),
            ("gilbert:80=127.0.0.1", "has no :PORT"),
            ("gilbert:80=127.0.0.1:70000", "port \"70000\""),
            ("gilbert:80=::1:5", "brackets"),
            ("gilbert:80=a:1;gilbert:80=b:2", "mapped twice"),
        ];
        for (text, message) in cases {
            let err = ResolveMap::parse(text).expect_err(text);
            assert!(err.to_string().contains(message), "{text}: {err}");
        }
    }
}
