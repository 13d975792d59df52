//! An HTTP service under handover that upgrades itself from a watched file.
//!
//! ```text
//! cargo run --example hello                       # serves 127.0.0.1:8080 (PORT to change)
//! curl 127.0.0.1:8080/                            # hello from pid=… worker=1 sha256=…
//! cp target/debug/examples/hello target/debug/examples/hello.next
//! echo >> target/debug/examples/hello.next        # a new hash: the service upgrades itself
//! kill -USR2 <master pid>                          # or just restart
//! ```

#[path = "common/mod.rs"]
mod common;

fn main() -> std::process::ExitCode {
    common::exit_code("hello", run())
}

fn run() -> Result<(), handover::Error> {
    common::init_logging();
    let config = common::config_from_env()?;
    handover::Handover::new(config)
        // HELLO_VERSION at build time: two builds that differ in one literal (delta_size).
        .version(option_env!("HELLO_VERSION").unwrap_or(env!("CARGO_PKG_VERSION")))
        .run(|worker| async move {
            // Runs only in workers: the master never calls this closure.
            common::spawn_logging_job(&worker);
            common::serve_hello(worker, false).await
        })
}
