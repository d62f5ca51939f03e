//! The summary of a comparison: per broker, the median over its runs of each headline figure,
//! and its ratio to the same median of the baseline (the first broker).

use crate::report::ReportFile;

/// A headline figure read from one run's report; `None` when the run did not measure it.
pub struct Metric {
    pub name: &'static str,
    /// The key in `compare.json`.
    pub key: &'static str,
    pub read: fn(&ReportFile) -> Option<f64>,
}

pub const METRICS: [Metric; 7] = [
    Metric {
        name: "MB/s",
        key: "mb_per_second",
        read: |r| Some(r.mb_per_second),
    },
    Metric {
        name: "publish p50 ms",
        key: "publish_p50_ms",
        read: |r| Some(r.publish_latency_us.p50 as f64 / 1000.0),
    },
    Metric {
        name: "publish p99 ms",
        key: "publish_p99_ms",
        read: |r| Some(r.publish_latency_us.p99 as f64 / 1000.0),
    },
    Metric {
        name: "e2e p50 ms",
        key: "e2e_p50_ms",
        read: |r| r.e2e_latency_us.map(|p| p.p50 as f64 / 1000.0),
    },
    Metric {
        name: "e2e p99 ms",
        key: "e2e_p99_ms",
        read: |r| r.e2e_latency_us.map(|p| p.p99 as f64 / 1000.0),
    },
    Metric {
        name: "broker CPU s/GB",
        key: "broker_cpu_seconds_per_gb",
        read: |r| r.broker_cpu_seconds_per_gb,
    },
    Metric {
        name: "broker peak RSS MiB",
        key: "broker_peak_rss_mib",
        read: |r| r.broker_peak_rss_bytes.map(|b| b as f64 / 1_048_576.0),
    },
];

/// The median (the mean of the middle two for an even count); `None` for no values.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct BrokerSummary {
    pub broker: String,
    /// Runs the medians are taken over.
    pub runs: usize,
    /// One per [`METRICS`], in order.
    pub medians: Vec<Option<f64>>,
    /// One per [`METRICS`]: this broker's median over the baseline's (`None` without both).
    pub ratios: Vec<Option<f64>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// In the order the brokers were named; the first is the baseline.
    pub brokers: Vec<BrokerSummary>,
}

impl Summary {
    /// `runs` holds (broker, report) for the runs to summarize; `brokers` the order (the first
    /// is the baseline). A broker without runs gets a row of "-".
    pub fn of(brokers: &[String], runs: &[(String, ReportFile)]) -> Summary {
        let mut out: Vec<BrokerSummary> = brokers
            .iter()
            .map(|b| {
                let mine: Vec<&ReportFile> = runs
                    .iter()
                    .filter(|(name, _)| name == b)
                    .map(|(_, r)| r)
                    .collect();
                BrokerSummary {
                    broker: b.clone(),
                    runs: mine.len(),
                    medians: METRICS
                        .iter()
                        .map(|m| {
                            median(&mine.iter().filter_map(|r| (m.read)(r)).collect::<Vec<_>>())
                        })
                        .collect(),
                    ratios: Vec::new(),
                }
            })
            .collect();
        let baseline: Vec<Option<f64>> = out.first().map(|b| b.medians.clone()).unwrap_or_default();
        for b in &mut out {
            b.ratios = b
                .medians
                .iter()
                .zip(&baseline)
                .map(|(v, base)| match (v, base) {
                    (Some(v), Some(base)) if *base != 0.0 => Some(v / base),
                    _ => None,
                })
                .collect();
        }
        Summary { brokers: out }
    }

    /// A cell: `310.00` for the baseline, `155.00 (0.50x)` for another broker, `-` when not
    /// measured.
    pub fn cell(&self, broker: usize, metric: usize) -> String {
        let b = &self.brokers[broker];
        match (b.medians[metric], b.ratios[metric]) {
            (None, _) => "-".into(),
            (Some(v), Some(r)) if broker > 0 => format!("{v:.2} ({r:.2}x)"),
            (Some(v), _) => format!("{v:.2}"),
        }
    }

    pub fn markdown(&self) -> String {
        let mut s = format!(
            "| broker (runs) | {} |\n|---|{}\n",
            METRICS.map(|m| m.name).join(" | "),
            "---|".repeat(METRICS.len())
        );
        for (i, b) in self.brokers.iter().enumerate() {
            let cells: Vec<String> = (0..METRICS.len()).map(|m| self.cell(i, m)).collect();
            s.push_str(&format!(
                "| {} ({}) | {} |\n",
                b.broker,
                b.runs,
                cells.join(" | ")
            ));
        }
        s
    }

    /// For `compare.json`: per broker, runs and each metric's median and ratio.
    pub fn json(&self) -> serde_json::Value {
        let rows = self.brokers.iter().map(|b| {
            let mut row = serde_json::Map::new();
            row.insert("broker".into(), b.broker.clone().into());
            row.insert("runs".into(), b.runs.into());
            for (i, m) in METRICS.iter().enumerate() {
                row.insert(m.key.into(), b.medians[i].into());
                row.insert(format!("{}_ratio", m.key), b.ratios[i].into());
            }
            serde_json::Value::Object(row)
        });
        serde_json::Value::Array(rows.collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Percentiles;

    /// The cases of the retired scripts/test_bench_summary.py.
    fn report(mb: f64, p99_us: u64, cpu: f64, rss_mib: u64, e2e: Option<u64>) -> ReportFile {
        let pct = |v: u64| Percentiles {
            p50: v / 2,
            p99: v,
            p999: v,
            p9999: v,
            max: v,
            curve: [0; 12],
        };
        ReportFile {
            schema: 1,
            mb_per_second: mb,
            publish_latency_us: pct(p99_us),
            e2e_latency_us: e2e.map(pct),
            broker_cpu_seconds_per_gb: Some(cpu),
            broker_peak_rss_bytes: Some(rss_mib * 1_048_576),
            verified: true,
            ..ReportFile::default()
        }
    }

    fn summary() -> Summary {
        let runs: Vec<(String, ReportFile)> = [
            ("a", report(300.0, 4000, 0.6, 60, None)),
            ("a", report(330.0, 5000, 0.7, 62, None)),
            ("a", report(310.0, 6000, 0.5, 61, None)),
            ("b", report(150.0, 8000, 4.0, 600, Some(3000))),
            ("b", report(170.0, 9500, 4.2, 640, Some(4000))),
            ("b", report(155.0, 7000, 3.8, 605, Some(5000))),
        ]
        .into_iter()
        .map(|(b, r)| (b.to_string(), r))
        .collect();
        Summary::of(&["a".to_string(), "b".to_string()], &runs)
    }

    #[test]
    fn medians_and_ratios_to_the_baseline() {
        let s = summary();
        assert_eq!(s.brokers[0].runs, 3);
        assert_eq!(s.cell(0, 0), "310.00", "median MB/s of the baseline");
        assert_eq!(
            s.cell(1, 0),
            "155.00 (0.50x)",
            "median and ratio of another broker"
        );
        assert_eq!(s.cell(1, 2), "8.00 (1.60x)", "publish p99 median and ratio");
        assert_eq!(s.cell(0, 3), "-", "no e2e figures when not measured");
        assert_eq!(s.cell(1, 3), "2.00", "no ratio without a baseline figure");
        assert_eq!(s.cell(1, 6), "605.00 (9.92x)", "RSS ratio");
        assert_eq!(s.cell(1, 5), "4.00 (6.67x)", "CPU s/GB ratio");
    }

    #[test]
    fn the_table_has_a_row_per_broker_in_order() {
        let table = summary().markdown();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(lines[0].starts_with("| broker (runs) | MB/s | publish p50 ms |"));
        assert!(lines[2].starts_with("| a (3) | 310.00 | "), "{table}");
        assert!(
            lines[3].starts_with("| b (3) | 155.00 (0.50x) | "),
            "{table}"
        );
        let json = summary().json();
        assert_eq!(json[1]["mb_per_second"], 155.0);
        assert_eq!(json[1]["mb_per_second_ratio"], 0.5);
        assert!(json[0]["e2e_p99_ms"].is_null());
    }

    #[test]
    fn a_broker_without_runs_gets_dashes() {
        let s = Summary::of(
            &["a".into(), "b".into()],
            &[("b".into(), report(1.0, 1, 1.0, 1, None))],
        );
        assert_eq!(s.brokers[0].runs, 0);
        assert_eq!(s.cell(0, 0), "-");
        assert_eq!(s.cell(1, 0), "1.00", "no ratio without a baseline");
    }

    #[test]
    fn median_of_odd_even_and_no_values() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }
}
