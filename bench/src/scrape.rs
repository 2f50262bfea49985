//! Reading a Prometheus endpoint of the agent or a memory server (`--metrics`): one plain
//! HTTP GET, and the samples of the text format.

use std::{
    io::{Read, Write},
    time::Duration,
};

/// The body of `GET /metrics` on 127.0.0.1:`port`, or `None` if the endpoint does not answer.
pub fn get(port: u16) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// The samples of a text-format body: (metric name without its labels, value), comments and
/// lines that are not samples left out.
pub fn samples(body: &str) -> impl Iterator<Item = (&str, f64)> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            let v = value.trim().parse::<f64>().ok()?;
            Some((name.split('{').next().unwrap_or(name), v))
        })
}

/// The sum of the samples of metric `name` over its label sets, `None` when it has none.
pub fn sum(body: &str, name: &str) -> Option<f64> {
    samples(body)
        .filter(|(n, _)| *n == name)
        .map(|(_, v)| v)
        .reduce(|a, b| a + b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_and_sums() {
        let body = "HTTP/1.0 200 OK\r\n\r\n# TYPE a counter\na 3\nb{x=\"1\"} 1.5\nb{x=\"2\"} 2\nc nan-ish\n";
        assert_eq!(sum(body, "a"), Some(3.0));
        assert_eq!(sum(body, "b"), Some(3.5));
        assert_eq!(sum(body, "c"), None);
        assert_eq!(sum(body, "d"), None);
    }
}
