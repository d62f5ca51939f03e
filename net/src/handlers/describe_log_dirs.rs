//! DescribeLogDirs (key 35): the broker's log directory and, for every replica it holds (led
//! or followed) of the partitions asked about (null: all), its size on disk and how far its
//! log end is behind the high watermark. Each core reports the logs it owns. From v4 the
//! directory's total and usable bytes too (statvfs). sluice keeps all logs in one directory
//! (`log.dirs` takes one path), so there is one result.

use std::collections::BTreeMap;
use std::rc::Rc;

use futures::future::join_all;
use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::{ApiKey, DescribeLogDirsRequest, DescribeLogDirsResponse};
use sluice_core::TopicPartition;

use super::{str_bytes, topic_name, Api, Outcome};
use crate::connection::{encode_response, RequestContext};
use crate::router::{CoreRequest, CoreResponse};
use crate::shard::Shard;

pub const API: Api = Api {
    key: ApiKey::DescribeLogDirs,
    min_version: 1,
    max_version: 4,
};

pub async fn handle(
    shard: &Rc<Shard>,
    ctx: &RequestContext,
    request: DescribeLogDirsRequest,
) -> Outcome {
    let named: Option<Vec<TopicPartition>> = request.topics.map(|topics| {
        topics
            .into_iter()
            .flat_map(|t| {
                let name = t.topic.0.to_string();
                t.partitions
                    .into_iter()
                    .map(move |p| TopicPartition::new(name.clone(), p))
            })
            .collect()
    });
    let calls: Vec<_> = (0..shard.cores())
        .map(|core| {
            shard.dispatch(
                core,
                CoreRequest::LogSizes {
                    partitions: named.clone(),
                },
            )
        })
        .collect();
    let mut topics: BTreeMap<String, Vec<DescribeLogDirsPartition>> = BTreeMap::new();
    for answer in join_all(calls).await {
        if let Some(CoreResponse::LogSizes(sizes)) = answer {
            for (tp, size, lag) in sizes {
                topics.entry(tp.topic).or_default().push(
                    DescribeLogDirsPartition::default()
                        .with_partition_index(tp.partition)
                        .with_partition_size(i64::try_from(size).unwrap_or(i64::MAX))
                        .with_offset_lag(lag),
                );
            }
        }
    }
    let topics = topics
        .into_iter()
        .map(|(name, mut partitions)| {
            partitions.sort_by_key(|p| p.partition_index);
            DescribeLogDirsTopic::default()
                .with_name(topic_name(&name))
                .with_partitions(partitions)
        })
        .collect();
    let dir = &shard.broker.log_dirs;
    let path = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
    let (total, usable) = space(&path).unwrap_or((-1, -1));
    let result = DescribeLogDirsResult::default()
        .with_log_dir(str_bytes(&path.to_string_lossy()))
        .with_topics(topics)
        .with_total_bytes(total)
        .with_usable_bytes(usable);
    encode_response(
        ctx,
        &DescribeLogDirsResponse::default().with_results(vec![result]),
    )
}

/// Total and available bytes of the file system holding `path`.
fn space(path: &std::path::Path) -> Option<(i64, i64)> {
    let c_path = std::ffi::CString::new(path.to_string_lossy().as_bytes()).ok()?;
    // SAFETY: statvfs(3) with a NUL-terminated path and a zeroed struct it fills.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    let block = stat.f_frsize as i64;
    Some((
        (stat.f_blocks as i64).saturating_mul(block),
        (stat.f_bavail as i64).saturating_mul(block),
    ))
}
