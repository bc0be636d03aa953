//! TLS and mutual TLS against a real `quiver serve --tls-cert/--tls-key [--tls-client-ca]`, with
//! certificates made in the test (support/pki.rs). The server keeps its Unix socket in plaintext,
//! so every TLS answer is compared with the plaintext answer of the same server.

#[path = "support/pki.rs"]
mod pki;
#[allow(dead_code)] // support::source (the Parquet side) serves against_server.rs
mod support;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use pki::Pki;
use prost::Message;
use quiver_client::proto::GetFeaturesRequest;
use quiver_client::{ClientOptions, EntityId, Error, Pem, QuiverClient, TlsOptions};
use support::server::{Dataset, Server, USERS, dataset, serial};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| Pki::new(&PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("quiver-e2e-pki")))
}

fn with_tls(tls: TlsOptions) -> ClientOptions {
    // A deadline, so a refused client fails rather than waits.
    ClientOptions { tls: Some(tls), request_timeout: Some(Duration::from_secs(10)), ..Default::default() }
}

fn trusting(ca: &std::path::Path) -> TlsOptions {
    TlsOptions::from_files(ca).unwrap()
}

/// The TCP address of a server started with --tls-cert.
fn https(server: &Server) -> String {
    server.tcp.replacen("http://", "https://", 1)
}

/// Connects and makes one call: a refusal may come at the handshake or, for a client certificate
/// under TLS 1.3, only once the server has read it.
async fn first_call(addr: &str, options: &ClientOptions) -> Result<String, Error> {
    let client = QuiverClient::connect_with(addr, options).await?;
    Ok(client.snapshot_info().await?.current_version)
}

/// Ids across the whole range, with some no view knows.
fn ids() -> Vec<i64> {
    let n = USERS as i64;
    let mut ids: Vec<i64> = (0..n).step_by(11).collect();
    ids.extend([n - 1, n, 5 * n, -1]);
    ids
}

/// Every answer over `tls` equals, byte for byte and decoded, the plaintext answer of `plain`.
async fn same_answers(tls: &QuiverClient, plain: &QuiverClient, data: &Dataset) {
    let (mut rows, mut found) = (0usize, 0usize);
    for chunk in ids().chunks(40) {
        let request = GetFeaturesRequest { int64_ids: chunk.to_vec(), ..Default::default() };
        let over_tls = tls.get_features_raw(request.clone()).await.unwrap();
        let over_plain = plain.get_features_raw(request).await.unwrap();
        assert_eq!(over_tls.version, data.version);
        // As encoded bytes: NaN values would make the messages unequal to themselves.
        assert!(over_tls.encode_to_vec() == over_plain.encode_to_vec(), "raw answers differ for ids {chunk:?}");
        rows += over_tls.rows.len();
        found += over_tls.rows.iter().flat_map(|r| &r.found).filter(|f| **f).count();

        let ids: Vec<EntityId> = chunk.iter().map(|&id| EntityId::Int64(id)).collect();
        let (a, b) = (tls.get_features(&ids, &[]).await.unwrap(), plain.get_features(&ids, &[]).await.unwrap());
        assert_eq!(a.len(), chunk.len());
        for (id, (x, y)) in chunk.iter().zip(a.rows().iter().zip(b.rows())) {
            for (vx, vy) in x.views().iter().zip(y.views()) {
                let same = match (vx, vy) {
                    (Some(vx), Some(vy)) => {
                        vx.values().len() == vy.values().len()
                            && vx.values().iter().zip(vy.values()).all(|(p, q)| p.bit_eq(q))
                    }
                    (None, None) => true,
                    _ => false,
                };
                assert!(same, "decoded values of user {id} differ between TLS and plaintext");
            }
        }
    }
    // The comparison must have covered real rows, not only empty answers.
    assert!(rows == ids().len() && found > rows, "{rows} rows, {found} found views");
}

#[test]
fn tls_reads_the_same_features_as_plaintext() {
    let _one_at_a_time = serial();
    runtime().block_on(async {
        let (data, pki) = (dataset(), pki());
        let flags = pki.serve_flags(false);
        let mut server = Server::start_on(&data.root, &flags.iter().map(String::as_str).collect::<Vec<_>>());
        let (https, uds) = (https(&server), server.uds.clone());
        let tls = server.ready_client_with(&https, &with_tls(trusting(&pki.ca))).await;
        let plain = server.ready_client(&uds).await;
        same_answers(&tls, &plain, data).await;

        // The certificate names 127.0.0.1 and localhost: overriding the name works for a name
        // it holds and fails for one it does not.
        let as_localhost = with_tls(trusting(&pki.ca).with_domain("localhost"));
        assert_eq!(first_call(&https, &as_localhost).await.unwrap(), data.version);
        let err = first_call(&https, &with_tls(trusting(&pki.ca).with_domain("quiver.example"))).await.unwrap_err();
        assert!(matches!(err, Error::Connect { .. }) && err.to_string().contains("certificate"), "{err}");

        // The port speaks TLS only: a plaintext client gets a transport failure (the server drops the
        // HTTP/2 preface it cannot read as a TLS handshake), never an answer and never a deadline: and
        // the server goes on serving TLS clients.
        let plaintext = ClientOptions { request_timeout: Some(Duration::from_secs(10)), ..Default::default() };
        let err = first_call(&server.tcp, &plaintext).await.unwrap_err();
        eprintln!("plaintext to the TLS port: {err}");
        // A transport failure: no connection, or a status the client made from the broken connection
        // (it carries the transport error as its source), never one the server answered with.
        let transport = match &err {
            Error::Connect { .. } => true,
            Error::Status(s) => {
                // Cancelled too: hyper reports the closed connection as a cancelled request
                // when the server drops it before the client's request was written (seen once in CI).
                matches!(s.code(), tonic::Code::Unknown | tonic::Code::Unavailable | tonic::Code::Cancelled)
                    && std::error::Error::source(s).is_some()
            }
            _ => false,
        };
        assert!(transport, "plaintext to the TLS port: expected a transport failure, got {err:?}");
        assert!(server.is_running(), "the server exited after a plaintext client");
        assert_eq!(first_call(&https, &with_tls(trusting(&pki.ca))).await.unwrap(), data.version);
    });
}

#[test]
fn a_server_certificate_from_another_ca_is_refused_at_connect() {
    let _one_at_a_time = serial();
    runtime().block_on(async {
        let (data, pki) = (dataset(), pki());
        let flags = pki.serve_flags(false);
        let mut server = Server::start_on(&data.root, &flags.iter().map(String::as_str).collect::<Vec<_>>());
        let https = https(&server);
        server.ready_client_with(&https, &with_tls(trusting(&pki.ca))).await;

        let err = match QuiverClient::connect_with(&https, &with_tls(trusting(&pki.other_ca))).await {
            Ok(_) => panic!("connected to a server whose certificate the CA did not sign"),
            Err(e) => e,
        };
        eprintln!("wrong CA: {err}");
        assert!(matches!(err, Error::Connect { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains(&https) && text.contains("certificate"), "{text}");
    });
}

#[test]
fn mutual_tls_serves_a_client_certificate_of_its_ca_only() {
    let _one_at_a_time = serial();
    runtime().block_on(async {
        let (data, pki) = (dataset(), pki());
        let flags = pki.serve_flags(true);
        let mut server = Server::start_on(&data.root, &flags.iter().map(String::as_str).collect::<Vec<_>>());
        let (https, uds) = (https(&server), server.uds.clone());
        let identified = with_tls(trusting(&pki.ca).with_identity_files(&pki.client_cert, &pki.client_key).unwrap());
        let client = server.ready_client_with(&https, &identified).await;
        let plain = server.ready_client(&uds).await;
        same_answers(&client, &plain, data).await;

        let refused = [
            ("no client certificate", with_tls(trusting(&pki.ca))),
            (
                "a client certificate of another CA",
                with_tls(trusting(&pki.ca).with_identity_files(&pki.stranger_cert, &pki.stranger_key).unwrap()),
            ),
        ];
        for (what, options) in &refused {
            // The refusal comes after the handshake (TLS 1.3); connect_with's first call finds it.
            let err = match QuiverClient::connect_with(&https, options).await {
                Ok(_) => panic!("{what}: connected to a server that requires a client certificate of its CA"),
                Err(e) => e,
            };
            eprintln!("{what}: {err}");
            let text = err.to_string();
            assert!(matches!(err, Error::Tls(_)), "{what}: {err:?}");
            assert!(text.contains(&https) && text.contains("client certificate"), "{what}: {text}");
        }
        // and the trusted client is still served
        assert_eq!(first_call(&https, &identified).await.unwrap(), data.version);

        // quiver-loadgen over mutual TLS, named by --tls-domain
        #[cfg(feature = "loadgen")]
        loadgen_over_mutual_tls(&https, &pki);
    });
}

#[cfg(feature = "loadgen")]
fn loadgen_over_mutual_tls(https: &str, pki: &Pki) {
    {
        let out = std::env::temp_dir().join(format!("quiver-loadgen-tls-{}.json", std::process::id()));
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_quiver-loadgen"))
            .args(["--addr", &https, "--rate", "100", "--duration", "1", "--warmup", "0.2"])
            .args(["--users", &USERS.to_string(), "--json-out", out.to_str().unwrap()])
            .args(["--tls-ca", pki.ca.to_str().unwrap(), "--tls-domain", "localhost"])
            .args(["--tls-cert", pki.client_cert.to_str().unwrap(), "--tls-key", pki.client_key.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(status.success());
        let json = std::fs::read_to_string(&out).unwrap();
        let _ = std::fs::remove_file(&out);
        assert!(json.contains("\"count\": 100,") && json.contains("\"errors\": 0,"), "{json}");
        // without its client certificate it cannot start
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_quiver-loadgen"))
            .args(["--addr", &https, "--rate", "10", "--duration", "0.2", "--warmup", "0"])
            .args(["--tls-ca", pki.ca.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "loadgen ran over mutual TLS without a client certificate");
        assert!(stderr.contains("requires a client certificate"), "{stderr}");
    }
}

/// Settings that cannot work are refused before connecting, naming the file or address at fault.
/// Nothing listens on port 1: settings that pass the checks fail to connect instead.
#[test]
fn unusable_tls_settings_are_refused_naming_the_culprit() {
    let pki = pki();
    let addr = "https://127.0.0.1:1";
    let rt = runtime();
    let connect = |options: &ClientOptions, addr: &str| rt.block_on(QuiverClient::connect_with(addr, options));
    let tls_err = |options: &ClientOptions, addr: &str| match connect(options, addr) {
        Err(Error::Tls(m)) => m,
        Err(e) => panic!("{addr}: expected a TLS error, got {e}"),
        Ok(_) => panic!("{addr}: connected with {options:?}"),
    };
    let good = connect(&with_tls(trusting(&pki.ca)), addr);
    assert!(matches!(good, Err(Error::Connect { .. })), "{:?}", good.err());

    let missing = pki.ca.with_file_name("no-such-ca.pem");
    let err = TlsOptions::from_files(&missing).unwrap_err().to_string();
    assert!(err.contains(missing.to_str().unwrap()), "{err}");

    // A key where the CA should be; a certificate where the key should be; a key of another certificate.
    let m = tls_err(&with_tls(trusting(&pki.client_key)), addr);
    assert!(m.contains(pki.client_key.to_str().unwrap()) && m.contains("no CERTIFICATE"), "{m}");
    let m =
        tls_err(&with_tls(trusting(&pki.ca).with_identity_files(&pki.client_cert, &pki.client_cert).unwrap()), addr);
    assert!(m.contains(pki.client_cert.to_str().unwrap()) && m.contains("private key"), "{m}");
    let m =
        tls_err(&with_tls(trusting(&pki.ca).with_identity_files(&pki.client_cert, &pki.stranger_key).unwrap()), addr);
    assert!(m.contains(pki.stranger_key.to_str().unwrap()) && m.contains("does not fit"), "{m}");
    let garbage =
        Pem::from_bytes("vault:quiver/ca", "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n");
    let m = tls_err(&with_tls(TlsOptions::new(garbage)), addr);
    assert!(m.contains("vault:quiver/ca"), "{m}");
    let m = tls_err(&with_tls(trusting(&pki.ca).with_domain("not a name")), addr);
    assert!(m.contains("not a name"), "{m}");

    // TLS settings and the address must agree.
    let m = tls_err(&ClientOptions::default(), addr);
    assert!(m.contains(addr) && m.contains("ClientOptions::tls"), "{m}");
    let m = tls_err(&with_tls(trusting(&pki.ca)), "unix:///tmp/quiver.sock");
    assert!(m.contains("unix:///tmp/quiver.sock") && m.contains("Unix socket"), "{m}");
    let m = tls_err(&with_tls(trusting(&pki.ca)), "http://127.0.0.1:1");
    assert!(m.contains("https://"), "{m}");

    // Debug output never shows key bytes.
    let key = Pem::read(&pki.client_key).unwrap();
    let shown = format!("{:?}", trusting(&pki.ca).with_identity(key.clone(), key.clone()));
    assert!(!shown.contains("PRIVATE KEY") && shown.contains(pki.client_key.to_str().unwrap()), "{shown}");
}
