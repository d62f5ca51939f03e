//! `sluice-bench groups`: how fast a broker's group coordinator is, with librdkafka consumers.
//!
//! - **Leave:** 4 members (cooperative-sticky) share an 8-partition topic; one closes; the time
//!   until the 3 survivors hold all 8 partitions again.
//! - **Join:** a new member joins the 3; the time until it holds partitions and all 8 are held.
//! - **Commits:** one member commits the offsets of its partitions synchronously, over and over;
//!   commits per second.
//!
//! Each is repeated (`--repeat`, on a fresh group and topic) and reported as the median with
//! every run. Any Kafka-protocol broker, given its bootstrap address.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

pub const USAGE: &str = "usage: sluice-bench groups --bootstrap HOST:PORT [--repeat 5] [--commit-seconds 5] [--json FILE]
  measures, with librdkafka consumers: the rebalance after one of 4 cooperative-sticky members
  leaves an 8-partition topic, the rebalance when a new member joins the 3 survivors, and
  synchronous OffsetCommit throughput; medians over --repeat runs.";

const PARTITIONS: i32 = 8;
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone)]
pub struct Options {
    pub bootstrap: String,
    pub repeat: usize,
    pub commit_seconds: u64,
    pub json: Option<String>,
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let mut o = Options {
            bootstrap: String::new(),
            repeat: 5,
            commit_seconds: 5,
            json: None,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || it.next().cloned().ok_or(format!("{flag} needs a value"));
            match flag.as_str() {
                "--bootstrap" => o.bootstrap = value()?,
                "--repeat" => o.repeat = value()?.parse().map_err(|_| "--repeat: a number")?,
                "--commit-seconds" => {
                    o.commit_seconds = value()?.parse().map_err(|_| "--commit-seconds: a number")?
                }
                "--json" => o.json = Some(value()?),
                other => return Err(format!("unknown flag {other}")),
            }
        }
        if o.bootstrap.is_empty() {
            return Err("--bootstrap is required".into());
        }
        if o.repeat == 0 || o.commit_seconds == 0 {
            return Err("--repeat and --commit-seconds must be at least 1".into());
        }
        Ok(o)
    }
}

/// One run's figures.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub leave_ms: f64,
    pub join_ms: f64,
    pub commits_per_second: f64,
}

fn member(bootstrap: &str, group: &str, topic: &str) -> Result<BaseConsumer, String> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("session.timeout.ms", "10000")
        // The rebalance timeout: a member that does not rejoin a rebalance is dropped after
        // this long (librdkafka's default is 5 minutes, longer than a run may wait).
        .set("max.poll.interval.ms", "20000")
        .set("heartbeat.interval.ms", "100")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| format!("consumer: {e}"))?;
    c.subscribe(&[topic])
        .map_err(|e| format!("subscribe: {e}"))?;
    Ok(c)
}

fn assigned(c: &BaseConsumer) -> BTreeSet<i32> {
    c.assignment()
        .map(|tpl| tpl.elements().iter().map(|e| e.partition()).collect())
        .unwrap_or_default()
}

/// Polls until every partition is held exactly once and `extra` holds; the time it took.
fn settle(
    members: &[BaseConsumer],
    extra: impl Fn(&[BaseConsumer]) -> bool,
) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        for c in members {
            let _ = c.poll(Duration::from_millis(1));
        }
        let held: Vec<i32> = members.iter().flat_map(assigned).collect();
        let distinct: BTreeSet<i32> = held.iter().copied().collect();
        if held.len() == PARTITIONS as usize
            && distinct.len() == PARTITIONS as usize
            && extra(members)
        {
            return Ok(start.elapsed());
        }
        if start.elapsed() > SETTLE_TIMEOUT {
            return Err(format!(
                "the group did not settle within {} s",
                SETTLE_TIMEOUT.as_secs()
            ));
        }
        if crate::load::INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
            return Err("interrupted".into());
        }
    }
}

fn create_topic(bootstrap: &str, topic: &str) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .map_err(|e| format!("admin: {e}"))?;
    let results = futures::executor::block_on(admin.create_topics(
        &[NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1))],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
    ))
    .map_err(|e| format!("create topic: {e}"))?;
    for r in results {
        r.map_err(|(t, e)| format!("create topic {t}: {e}"))?;
    }
    // A topic just created may not have leaders yet (Kafka): let its metadata settle.
    std::thread::sleep(Duration::from_millis(500));
    Ok(())
}

fn one_run(o: &Options, index: usize) -> Result<Run, String> {
    let tag = format!("{}-{index}", std::process::id());
    let topic = format!("sluice-bench-groups-{tag}");
    let group = format!("sluice-bench-group-{tag}");
    create_topic(&o.bootstrap, &topic)?;
    let mut members = (0..4)
        .map(|_| member(&o.bootstrap, &group, &topic))
        .collect::<Result<Vec<_>, _>>()?;
    settle(&members, |ms| ms.iter().all(|c| !assigned(c).is_empty()))?;

    let leaving = members.remove(0);
    leaving.unsubscribe();
    drop(leaving);
    let leave = settle(&members, |_| true)?;

    members.push(member(&o.bootstrap, &group, &topic)?);
    let join = settle(&members, |ms| {
        ms.last().is_some_and(|c| !assigned(c).is_empty())
    })?;

    // Synchronous commits of one member's partitions (offsets advancing each time).
    let committer = &members[0];
    let mine = assigned(committer);
    let mut commits = 0u64;
    let start = Instant::now();
    let window = Duration::from_secs(o.commit_seconds);
    while start.elapsed() < window {
        let mut tpl = TopicPartitionList::new();
        for p in &mine {
            tpl.add_partition_offset(&topic, *p, Offset::Offset(commits as i64 + 1))
                .map_err(|e| e.to_string())?;
        }
        committer
            .commit(&tpl, CommitMode::Sync)
            .map_err(|e| format!("commit: {e}"))?;
        commits += 1;
        for c in &members {
            let _ = c.poll(Duration::ZERO);
        }
    }
    let commits_per_second = commits as f64 / start.elapsed().as_secs_f64();
    Ok(Run {
        leave_ms: leave.as_secs_f64() * 1000.0,
        join_ms: join.as_secs_f64() * 1000.0,
        commits_per_second,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Runs the measurements; the Markdown summary and the JSON report.
pub fn run(o: &Options) -> Result<(String, String), String> {
    let mut runs = Vec::with_capacity(o.repeat);
    for i in 0..o.repeat {
        let r = one_run(o, i)?;
        eprintln!(
            "groups run {}: leave rebalance {:.0} ms, join rebalance {:.0} ms, {:.0} commits/s",
            i + 1,
            r.leave_ms,
            r.join_ms,
            r.commits_per_second
        );
        runs.push(r);
    }
    let fmt = |v: Vec<f64>, digits: usize| {
        v.iter()
            .map(|x| format!("{x:.digits$}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let leave: Vec<f64> = runs.iter().map(|r| r.leave_ms).collect();
    let join: Vec<f64> = runs.iter().map(|r| r.join_ms).collect();
    let commits: Vec<f64> = runs.iter().map(|r| r.commits_per_second).collect();
    let markdown = format!(
        "| figure ({} runs) | median | runs |\n|---|---|---|\n\
         | rebalance after 1 of 4 members leaves (ms) | {:.0} | {} |\n\
         | rebalance when a member joins 3 (ms) | {:.0} | {} |\n\
         | synchronous OffsetCommit of one member's partitions (commits/s) | {:.0} | {} |",
        runs.len(),
        median(leave.clone()),
        fmt(leave.clone(), 0),
        median(join.clone()),
        fmt(join.clone(), 0),
        median(commits.clone()),
        fmt(commits.clone(), 0),
    );
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.1}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let json = format!(
        "{{\"schema\":1,\"bootstrap\":\"{}\",\"leave_rebalance_ms\":{{\"median\":{:.1},\"runs\":[{}]}},\
         \"join_rebalance_ms\":{{\"median\":{:.1},\"runs\":[{}]}},\"commits_per_second\":{{\"median\":{:.1},\"runs\":[{}]}}}}\n",
        o.bootstrap,
        median(leave.clone()),
        list(&leave),
        median(join.clone()),
        list(&join),
        median(commits.clone()),
        list(&commits)
    );
    Ok((markdown, json))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_and_medians() {
        let args: Vec<String> = ["--bootstrap", "h:1", "--repeat", "3"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let o = Options::parse(&args).expect("parses");
        assert_eq!((o.repeat, o.commit_seconds), (3, 5));
        assert!(Options::parse(&[]).is_err());
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
