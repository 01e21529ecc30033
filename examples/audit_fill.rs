//! Benchmark support: fills a data directory's audit log with N distinct, well-chained entries
//! (what a long-running gate accumulates), so `bench/admin_bench.py` can measure serving with a
//! large log. Usage: `cargo run --release --example audit_fill -- DATA_DIR N`.

use tollgate::audit::{append_many_blocking, AuditEvent};
use tollgate::store::Store;

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(n)) = (args.get(1), args.get(2).and_then(|n| n.parse::<u64>().ok()))
    else {
        return Err("usage: audit_fill DATA_DIR N".into());
    };
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let store =
        Store::open(&std::path::Path::new(dir).join("tollgate.redb")).map_err(|e| e.to_string())?;
    let mut done = 0u64;
    while done < n {
        let batch: Vec<AuditEvent> = (done..(done + 20_000).min(n))
            .map(|i| {
                let mut ev = AuditEvent::about(
                    "pypi.file",
                    format!("project-{}", i % 5000),
                    Some(format!("project-{}-1.0-py3-none-any.whl", i % 5000)),
                    Some(format!("{:064x}", i)),
                    &format!("10.0.{}.{}", (i / 256) % 256, i % 256),
                )
                .allow("exact", "allowlists/main.toml:1".into());
                ev.time = 1_700_000_000 + i as i64;
                ev
            })
            .collect();
        done += batch.len() as u64;
        append_many_blocking(&store, batch)?;
    }
    println!("{n} audit entries in {dir}");
    Ok(())
}
