//! Live reload in the namespace lab with real clients: a policy reloaded
//! with `tlsgate reload` while 100 HTTPS downloads are in flight leaves
//! every one of them byte-exact, while new connections follow the new rule
//! at once; a configuration that does not load is refused (exit status 1,
//! the file and key named) and interception goes on as before; SIGHUP
//! reloads too. Needs root; run by scripts/test.sh.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::lab::{
    await_records, curl, every_download_reached, parallel_downloads, tls_config, Appliance, Lab, Origin,
};
use common::{output, text, tlsgate, Scratch};

const RESOLVE: &str = "origin.test:443:198.18.0.2";
const URL: &str = "https://origin.test/index.html";
const DOWNLOADS: usize = 100;

/// The lab's TLS configuration with a control socket; returns it and the
/// appliance CA certificate.
fn config(scratch: &Scratch, origin: &Origin) -> (std::path::PathBuf, std::path::PathBuf) {
    let (config, ca) = tls_config(scratch, &origin.cert());
    append(
        &config,
        &format!("\n[control]\nsocket = \"{}\"\n", scratch.path("control.sock").display()),
    );
    (config, ca)
}

fn append(config: &Path, text: &str) {
    let mut contents = std::fs::read_to_string(config).expect("config");
    contents.push_str(text);
    std::fs::write(config, contents).expect("config");
}

/// `tlsgate reload` against the running instance of `config`.
fn reload(config: &Path) -> std::process::Output {
    output(tlsgate().args(["reload", "--config"]).arg(config))
}

/// curl to origin.test trusting only `ca`, with its handshake (`-v`).
fn fetch(lab: &Lab, ca: &Path) -> std::process::Output {
    curl(lab, ca, &["-v", "--resolve", RESOLVE, URL])
}

#[test]
#[ignore = "needs root and network namespaces: run scripts/test.sh"]
fn a_policy_reloaded_under_a_hundred_downloads_leaves_them_byte_exact_and_new_connections_follow_it() {
    let lab = Lab::up();
    let scratch = Scratch::new("reload-policy");
    let origin = Origin::start(scratch.path("origin"), "origin.test", "valid");
    let (config, ca) = config(&scratch, &origin);
    let appliance = Appliance::start(&lab, &scratch, &config);
    // The first 256 KiB of the file at 32 KB/s each: about 8 s in flight.
    let file = std::fs::read(origin.0.join("www/file.bin")).expect("origin file");
    let file = file.get(..256 * 1024).expect("origin file of 256 KiB").to_vec();
    let downloads = scratch.path("downloads");

    let (reloaded, in_flight, bypassed) = std::thread::scope(|scope| {
        let operator = scope.spawn(|| {
            assert!(
                every_download_reached(&downloads, DOWNLOADS, 32 * 1024),
                "every download started"
            );
            // origin.test is bypassed from now on.
            append(&config, "\n[[policy]]\naction = \"bypass\"\nsni = [\"origin.test\"]\n");
            let reloaded = reload(&config);
            let in_flight = (0..DOWNLOADS).all(|index| {
                std::fs::metadata(downloads.join(format!("{index}.bin"))).is_ok_and(|f| f.len() < file.len() as u64)
            });
            // A new connection, trusting only the origin's own certificate.
            let bypassed = fetch(&lab, &origin.cert());
            (reloaded, in_flight, bypassed)
        });
        parallel_downloads(
            &lab,
            &ca,
            &downloads,
            DOWNLOADS,
            &["--range", "0-262143", "--http1.1", "--limit-rate", "32K"],
            |_| Vec::new(),
            &file,
        );
        operator.join().expect("operator thread")
    });
    assert!(reloaded.status.success(), "reload: {}", text(&reloaded.stderr));
    let said = text(&reloaded.stdout);
    assert!(
        said.contains("generation 1")
            && said.contains("new connections follow policy")
            && said.contains("1 of 1 worker"),
        "{said}"
    );
    assert!(in_flight, "every download was still running when the reload was done");
    assert!(bypassed.status.success(), "bypassed: {}", text(&bypassed.stderr));
    assert_eq!(text(&bypassed.stdout).trim(), "hello from origin.test");
    // And a client trusting only the appliance CA now sees the real
    // certificate, and rejects it.
    assert_eq!(fetch(&lab, &ca).status.code(), Some(60));

    let records = await_records(&scratch, DOWNLOADS + 2);
    let intercepted = records.iter().filter(|r| r["decision"] == "intercept").count();
    let bypassed: Vec<_> = records.iter().filter(|r| r["decision"] == "bypass").collect();
    assert_eq!(intercepted, DOWNLOADS, "{records:?}");
    assert_eq!(bypassed.len(), 2, "{records:?}");
    assert!(
        bypassed
            .iter()
            .all(|r| r["reason"].as_str().unwrap().contains("policy rule 1")),
        "{bypassed:?}"
    );
    let (status, report, printed) = appliance.stop();
    assert!(status.success(), "{printed}");
    assert_eq!(report["reloads"]["ok"], 1, "{report}");
    assert_eq!(report["reloads"]["refused"], 0, "{report}");
    assert_eq!(report["tcp"]["tls_intercepted"], DOWNLOADS, "{report}");
    assert!(printed.contains("reloads: 1 put in force, 0 refused"), "{printed}");
}

#[test]
#[ignore = "needs root and network namespaces: run scripts/test.sh"]
fn a_broken_configuration_is_refused_and_interception_continues() {
    let lab = Lab::up();
    let scratch = Scratch::new("reload-refused");
    let origin = Origin::start(scratch.path("origin"), "origin.test", "valid");
    let (config, ca) = config(&scratch, &origin);
    let good = std::fs::read_to_string(&config).expect("config");
    let appliance = Appliance::start(&lab, &scratch, &config);
    let intercepted = |lab: &Lab| {
        let result = fetch(lab, &ca);
        result.status.success() && text(&result.stderr).contains("issuer: CN=tlsgate interception CA")
    };
    assert!(intercepted(&lab));

    // A CA key that is not there, then a rule that does not parse.
    for (broken, named) in [
        (
            good.replace("/ca.key", "/missing.key"),
            ["tls.ca_cert, tls.ca_key", "missing.key"],
        ),
        (
            format!("{good}\n[[policy]]\naction = \"block\"\ndst = [\"nowhere\"]\n"),
            ["policy[1].dst", "nowhere"],
        ),
    ] {
        std::fs::write(&config, broken).expect("config");
        let refused = reload(&config);
        let said = text(&refused.stderr);
        assert_eq!(refused.status.code(), Some(1), "{said}");
        assert!(
            said.contains("reload refused") && said.contains(&config.display().to_string()),
            "{said}"
        );
        for name in named {
            assert!(said.contains(name), "{name} missing from: {said}");
        }
        assert!(intercepted(&lab), "still intercepted with the running configuration");
    }

    // SIGHUP reloads too: origin.test blocked from then on.
    std::fs::write(
        &config,
        format!("{good}\n[[policy]]\naction = \"block\"\nsni = [\"origin.test\"]\n"),
    )
    .expect("config");
    assert!(
        output(std::process::Command::new("kill").args(["-HUP", &appliance.child.id().to_string()]))
            .status
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let blocked = loop {
        let result = fetch(&lab, &ca);
        if !result.status.success() {
            break Some(result);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let blocked = blocked.expect("blocked within 10 s of SIGHUP");
    assert_ne!(
        blocked.status.code(),
        Some(60),
        "blocked (reset in the handshake), not a certificate error: {}",
        text(&blocked.stderr)
    );

    let (status, report, _) = appliance.stop();
    assert!(status.success());
    assert_eq!(report["reloads"]["ok"], 1, "{report}");
    assert_eq!(report["reloads"]["refused"], 2, "{report}");
}
