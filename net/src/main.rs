//! `sluice [server.properties] [--override key=value]... [--cores N]`

use sluice_core::config::BrokerConfig;

/// Decoders size vectors from lengths read off the wire; see `alloc_guard` for why this matters.
#[global_allocator]
static ALLOCATOR: sluice_net::alloc_guard::GuardedAllocator =
    sluice_net::alloc_guard::GuardedAllocator;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!(
            "usage: sluice [server.properties] [--override key=value]... [--cores N]\n\
             Starts a Kafka-compatible broker (default 127.0.0.1:9092, data in ./sluice-data)."
        );
        return;
    }
    let config = match BrokerConfig::from_args(&args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("sluice: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = sluice_net::runtime::run(config) {
        eprintln!("sluice: {e}");
        std::process::exit(1);
    }
}
