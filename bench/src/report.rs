//! What a run measured, and its two renderings: a Markdown row for people and a JSON document
//! for tools (`sluice-bench compare`, the parent of a multi-process run).
//!
//! The JSON document (`"schema": 1`) is defined once, by [`ReportFile`]; fields added since the
//! first version (`acked_bytes`, `verification`, `acked_per_process`, `workload.producers`,
//! `workload.processes`, the two histograms) are optional when read, so older reports still
//! load. A child process of a multi-process run adds its latency histograms (hdrhistogram V2
//! serialization, base64) so that the parent can merge distributions instead of averaging
//! percentiles.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::load::Options;

/// Latencies are recorded in µs from 1 µs to 60 s, 3 significant digits (0.1 % resolution).
pub const LATENCY_US_MAX: u64 = 60_000_000;

/// Quantiles at which the latency curve is sampled for the CDF chart.
pub const CURVE_QUANTILES: [f64; 12] = [
    0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 1.0,
];

/// An empty latency histogram with the bounds every process uses (merging needs equal bounds).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("histogram bounds")
}

/// hdrhistogram V2 serialization, base64: how a child process hands its distribution back.
pub fn encode_histogram(h: &Histogram<u64>) -> Result<String, String> {
    let mut bytes = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut bytes)
        .map_err(|e| format!("serialize histogram: {e:?}"))?;
    Ok(BASE64.encode(bytes))
}

pub fn decode_histogram(text: &str) -> Result<Histogram<u64>, String> {
    let bytes = BASE64
        .decode(text)
        .map_err(|e| format!("histogram is not base64: {e}"))?;
    Deserializer::new()
        .deserialize(&mut &bytes[..])
        .map_err(|e| format!("histogram does not decode: {e:?}"))
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p99: u64,
    #[serde(rename = "p99_9")]
    pub p999: u64,
    #[serde(rename = "p99_99")]
    pub p9999: u64,
    pub max: u64,
    /// Latency (µs) at each of [`CURVE_QUANTILES`] (for the charts; not in the JSON).
    #[serde(skip)]
    pub curve: [u64; 12],
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        Percentiles {
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            p9999: h.value_at_quantile(0.9999),
            max: h.max(),
            curve: CURVE_QUANTILES.map(|q| h.value_at_quantile(q)),
        }
    }
}

pub struct Report {
    pub options: Options,
    /// Acknowledged MB in each second of the measured window (the throughput time series).
    pub per_second_mb: Vec<f64>,
    /// The run was cut short by Ctrl-C; the figures cover what was measured.
    pub interrupted: bool,
    pub measured_seconds: f64,
    pub acked: u64,
    pub acked_bytes: u64,
    pub failed: u64,
    pub mb_per_second: f64,
    pub records_per_second: f64,
    pub publish_us: Percentiles,
    pub e2e_us: Option<Percentiles>,
    /// The distributions the percentiles were read from (merged over all processes).
    pub publish_histogram: Histogram<u64>,
    pub e2e_histogram: Option<Histogram<u64>>,
    pub broker_cpu_seconds: Option<f64>,
    pub broker_cpu_seconds_per_gb: Option<f64>,
    pub broker_peak_rss_bytes: Option<u64>,
    /// Records acknowledged in the measured window by each load-generator process.
    pub acked_per_process: Vec<u64>,
    /// Payload bytes the consumers received in the measured window (None without consumers).
    pub consumed_bytes: Option<u64>,
    pub verified: bool,
    pub verification: String,
}

/// The JSON report, `"schema": 1`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReportFile {
    pub schema: u32,
    pub workload: WorkloadFile,
    pub measured_seconds: f64,
    pub acked: u64,
    #[serde(default)]
    pub acked_bytes: u64,
    pub failed: u64,
    pub mb_per_second: f64,
    pub records_per_second: f64,
    /// Consume rate over the measured window (with consumers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumed_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consume_mb_per_second: Option<f64>,
    pub publish_latency_us: Percentiles,
    pub e2e_latency_us: Option<Percentiles>,
    pub broker_cpu_seconds: Option<f64>,
    pub broker_cpu_seconds_per_gb: Option<f64>,
    pub broker_peak_rss_bytes: Option<u64>,
    pub verified: bool,
    #[serde(default)]
    pub verification: String,
    pub interrupted: bool,
    pub per_second_mb: Vec<f64>,
    #[serde(default)]
    pub acked_per_process: Vec<u64>,
    /// Only in a child process's report: hdrhistogram V2, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_histogram: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e2e_histogram: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkloadFile {
    pub topic: String,
    pub partitions: i32,
    pub record_bytes: usize,
    pub acks: String,
    pub linger_ms: u64,
    pub compression: String,
    pub rate_mb: f64,
    pub seconds: u64,
    #[serde(default)]
    pub producers: usize,
    #[serde(default)]
    pub processes: usize,
    #[serde(default)]
    pub idempotence: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_records: Option<u64>,
}

/// Rounds for a readable JSON file; the figures are not more precise than this anyway.
fn rounded(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

impl ReportFile {
    pub fn parse(text: &str) -> Result<ReportFile, String> {
        serde_json::from_str(text).map_err(|e| format!("report JSON: {e}"))
    }
}

impl Report {
    /// The JSON document; `with_histograms` adds the two distributions (a child's report).
    pub fn file(&self, with_histograms: bool) -> Result<ReportFile, String> {
        let o = &self.options;
        let (publish_histogram, e2e_histogram) = if with_histograms {
            (
                Some(encode_histogram(&self.publish_histogram)?),
                self.e2e_histogram
                    .as_ref()
                    .map(encode_histogram)
                    .transpose()?,
            )
        } else {
            (None, None)
        };
        Ok(ReportFile {
            schema: 1,
            workload: WorkloadFile {
                topic: o.topic.clone(),
                partitions: o.partitions,
                record_bytes: o.record_bytes,
                acks: o.acks.clone(),
                linger_ms: o.linger_ms,
                compression: o.compression.clone(),
                rate_mb: o.rate_mb,
                seconds: o.seconds,
                producers: o.producers,
                processes: o.processes,
                idempotence: o.idempotence,
                transaction_records: o.transaction_records,
            },
            measured_seconds: rounded(self.measured_seconds, 3),
            acked: self.acked,
            acked_bytes: self.acked_bytes,
            failed: self.failed,
            mb_per_second: rounded(self.mb_per_second, 3),
            records_per_second: rounded(self.records_per_second, 1),
            consumed_bytes: self.consumed_bytes,
            consume_mb_per_second: self.consume_mb_per_second().map(|m| rounded(m, 3)),
            publish_latency_us: self.publish_us,
            e2e_latency_us: self.e2e_us,
            broker_cpu_seconds: self.broker_cpu_seconds.map(|c| rounded(c, 3)),
            broker_cpu_seconds_per_gb: self.broker_cpu_seconds_per_gb.map(|c| rounded(c, 4)),
            broker_peak_rss_bytes: self.broker_peak_rss_bytes,
            verified: self.verified,
            verification: self.verification.clone(),
            interrupted: self.interrupted,
            per_second_mb: self.per_second_mb.iter().map(|m| rounded(*m, 2)).collect(),
            acked_per_process: self.acked_per_process.clone(),
            publish_histogram,
            e2e_histogram,
        })
    }

    /// The JSON report (one line and a newline), without histograms.
    pub fn json(&self) -> String {
        let file = self
            .file(false)
            .expect("a report without histograms always encodes");
        serde_json::to_string(&file).expect("a report always serializes") + "\n"
    }

    /// Consumed MB/s over the measured window, with consumers.
    pub fn consume_mb_per_second(&self) -> Option<f64> {
        self.consumed_bytes
            .map(|b| b as f64 / self.measured_seconds.max(1e-9) / 1e6)
    }

    pub fn markdown(&self) -> String {
        let o = &self.options;
        let mut producing = match o.transaction_records {
            Some(n) => format!(", transactions of {n}"),
            None if o.idempotence => ", idempotent".into(),
            None => String::new(),
        };
        if o.processes > 1 {
            producing.push_str(&format!(", {} processes", o.processes));
        }
        let mut s = format!(
            "| workload | MB/s | records/s | publish p50/p99/p99.9/max µs | e2e p50/p99/p99.9/max µs | broker CPU s/GB | broker peak RSS MiB |\n\
             |---|---|---|---|---|---|---|\n\
             | {}p × {} B, acks={}, linger {} ms, {}, rate {}{} | {:.1} | {:.0} | {}/{}/{}/{} | ",
            match o.catch_up_mb {
                Some(mb) => format!("catch-up read of {mb} MB, {}", o.partitions),
                None => o.partitions.to_string(),
            },
            o.record_bytes,
            o.acks,
            o.linger_ms,
            o.compression,
            if o.rate_mb > 0.0 { format!("{} MB/s", o.rate_mb) } else { "max".into() },
            producing,
            self.mb_per_second,
            self.records_per_second,
            self.publish_us.p50,
            self.publish_us.p99,
            self.publish_us.p999,
            self.publish_us.max
        );
        match &self.e2e_us {
            Some(p) => s.push_str(&format!("{}/{}/{}/{} | ", p.p50, p.p99, p.p999, p.max)),
            None => s.push_str("- | "),
        }
        s.push_str(&match self.broker_cpu_seconds_per_gb {
            Some(c) => format!("{c:.3} | "),
            None => "- | ".into(),
        });
        s.push_str(&match self.broker_peak_rss_bytes {
            Some(r) => format!("{:.0} |", r as f64 / 1048576.0),
            None => "- |".into(),
        });
        s.push_str(&format!(
            "\n\n{} records acknowledged in {:.1} s{}{}; {}",
            self.acked,
            self.measured_seconds,
            match self.consume_mb_per_second() {
                Some(m) => format!(", consumed at {m:.1} MB/s"),
                None => String::new(),
            },
            if self.interrupted {
                " (interrupted: partial report)"
            } else {
                ""
            },
            self.verification
        ));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_survives_encoding() {
        let mut h = histogram();
        for v in [1, 10, 100, 1000, 12_345, 59_000_000] {
            h.record(v).expect("in range");
        }
        let back = decode_histogram(&encode_histogram(&h).expect("encode")).expect("decode");
        assert_eq!(back.len(), h.len());
        assert_eq!(back.max(), h.max());
        assert_eq!(Percentiles::of(&back), Percentiles::of(&h));
        assert!(decode_histogram("not base64!").is_err());
        assert!(decode_histogram(&BASE64.encode(b"not a histogram")).is_err());
    }

    #[test]
    fn a_schema_1_report_without_the_new_fields_still_loads() {
        let old = r#"{"schema":1,"workload":{"topic":"t","partitions":8,"record_bytes":1024,"acks":"all","linger_ms":5,"compression":"none","rate_mb":0,"seconds":20},
            "measured_seconds":20.001,"acked":100,"failed":0,"mb_per_second":316.6,"records_per_second":309179.7,
            "publish_latency_us":{"p50":1,"p99":2,"p99_9":3,"p99_99":4,"max":5},"e2e_latency_us":null,
            "broker_cpu_seconds":4.1,"broker_cpu_seconds_per_gb":0.66,"broker_peak_rss_bytes":63963136,
            "verified":true,"interrupted":false,"per_second_mb":[316.1,317.0]}"#;
        let r = ReportFile::parse(old).expect("parse");
        assert_eq!(r.publish_latency_us.p999, 3);
        assert_eq!(r.mb_per_second, 316.6);
        assert!(r.e2e_latency_us.is_none() && r.publish_histogram.is_none());
        assert!(
            ReportFile::parse("{\"schema\":1}").is_err(),
            "required fields"
        );
    }
}
