//! The Prometheus text exposition format (version 0.0.4), written from a snapshot
//! at scrape time: the manager and the daemon render their series from state they
//! already hold, so there is no registry to keep in step.

use std::fmt::Write as _;

/// The `Content-Type` of an exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The kind of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A value that goes up and down.
    Gauge,
    /// A value that only goes up (until its process or device restarts).
    Counter,
}

/// An exposition being written: families, each with its samples.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// An empty exposition.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the family `name` (its `# HELP` and `# TYPE` lines). Names are the
    /// caller's constants: `[a-zA-Z_:][a-zA-Z0-9_:]*`, counters ending in `_total`.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        let kind = match kind {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        };
        let _ = writeln!(
            self.out,
            "# HELP {name} {}\n# TYPE {name} {kind}",
            escape(help, false)
        );
        self
    }

    /// A sample of the family just started, with these labels (values escaped).
    pub fn sample(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        value: impl Into<f64>,
    ) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{label}=\"{}\"", escape(value, true));
            }
            self.out.push('}');
        }
        let value: f64 = value.into();
        let _ = writeln!(self.out, " {value}");
        self
    }

    /// A family with a single unlabelled sample.
    pub fn single(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        value: impl Into<f64>,
    ) -> &mut Self {
        self.family(name, kind, help).sample(name, &[], value)
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

/// A counter or gauge value from a count (exact up to 2⁵³, which no count here
/// reaches).
#[allow(clippy::cast_precision_loss)]
pub fn count(n: u64) -> f64 {
    n as f64
}

/// Escapes `\`, newlines and (in label values) `"`.
fn escape(text: &str, quote: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_escaping() {
        let mut e = Exposition::new();
        e.single("nanami_up", Kind::Gauge, "1 when up.\nReally.", 1u32);
        e.family("nanami_bytes_total", Kind::Counter, "Bytes.")
            .sample(
                "nanami_bytes_total",
                &[("gateway", "gw-a"), ("note", "a \"b\"\\c\nd")],
                count(12),
            );
        assert_eq!(
            e.finish(),
            "# HELP nanami_up 1 when up.\\nReally.\n# TYPE nanami_up gauge\nnanami_up 1\n\
             # HELP nanami_bytes_total Bytes.\n# TYPE nanami_bytes_total counter\n\
             nanami_bytes_total{gateway=\"gw-a\",note=\"a \\\"b\\\"\\\\c\\nd\"} 12\n"
        );
    }
}
