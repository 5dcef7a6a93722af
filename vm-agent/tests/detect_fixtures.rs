//! URL detection against what the real CLIs wrote (tests/fixtures/cli): every recording yields exactly
//! its login URL, whatever the chunking, and nothing else.

// A panic is a test's failure report, in its helpers too.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use proptest::prelude::*;
use vm_agent::detect::{DetectedUrl, UrlDetector, UrlSource};
use vm_agent::providers::ProviderRules;

struct Recording {
    name: String,
    cols: u16,
    rows: u16,
    output: Vec<u8>,
    expected: Vec<(String, String)>,
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/cli")
}

fn recordings() -> Vec<Recording> {
    let mut out = Vec::new();
    for provider in std::fs::read_dir(fixtures_dir()).expect("fixtures dir") {
        let provider = provider.expect("entry").path();
        if !provider.is_dir() {
            continue;
        }
        for case in std::fs::read_dir(&provider).expect("provider dir") {
            let case = case.expect("entry").path();
            let meta: serde_json::Value = serde_json::from_slice(
                &std::fs::read(case.join("session.json")).expect("session.json"),
            )
            .expect("json");
            let expected = meta["expected_urls"]
                .as_array()
                .expect("expected_urls")
                .iter()
                .map(|u| {
                    (
                        u["provider"].as_str().expect("provider").to_owned(),
                        u["url"].as_str().expect("url").to_owned(),
                    )
                })
                .collect();
            out.push(Recording {
                name: case.display().to_string(),
                cols: meta["cols"].as_u64().expect("cols") as u16,
                rows: meta["rows"].as_u64().expect("rows") as u16,
                output: std::fs::read(case.join("output.bin")).expect("output.bin"),
                expected,
            });
        }
    }
    assert!(out.len() >= 16, "all recordings found");
    out
}

fn rules() -> Arc<ProviderRules> {
    Arc::new(ProviderRules::builtin())
}

/// Feeds `data` cut at `cuts` and returns every URL, finish included.
fn detect(cols: u16, rows: u16, data: &[u8], cuts: &[usize]) -> Vec<DetectedUrl> {
    let mut d = UrlDetector::new(cols, rows, rules());
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    cuts.sort_unstable();
    let mut found = Vec::new();
    let mut last = 0;
    for c in cuts {
        found.extend(d.feed(&data[last..c]));
        last = c;
    }
    found.extend(d.feed(&data[last..]));
    found.extend(d.finish());
    found
}

fn pairs(found: &[DetectedUrl]) -> Vec<(String, String)> {
    found
        .iter()
        .map(|u| (u.provider.clone(), u.url.clone()))
        .collect()
}

#[test]
fn every_recording_yields_exactly_its_login_url() {
    for r in recordings() {
        let found = detect(r.cols, r.rows, &r.output, &[]);
        assert_eq!(pairs(&found), r.expected, "{}", r.name);
    }
}

#[test]
fn urls_are_reported_while_streaming_not_only_at_the_end() {
    for r in recordings() {
        let mut d = UrlDetector::new(r.cols, r.rows, rules());
        let found = d.feed(&r.output);
        assert_eq!(pairs(&found), r.expected, "{}", r.name);
        assert!(d.finish().is_empty(), "{}", r.name);
    }
}

#[test]
fn codex_tui_url_comes_from_its_osc8_hyperlink() {
    let r = recordings()
        .into_iter()
        .find(|r| r.name.ends_with("codex/tui-100x30"))
        .expect("codex tui recording");
    let found = detect(r.cols, r.rows, &r.output, &[]);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].source, UrlSource::Hyperlink);
}

#[test]
fn a_url_split_across_any_two_reads_is_found_once() {
    for r in recordings().into_iter().filter(|r| r.output.len() < 1000) {
        for cut in 0..=r.output.len() {
            let found = detect(r.cols, r.rows, &r.output, &[cut]);
            assert_eq!(pairs(&found), r.expected, "{} cut at {cut}", r.name);
        }
    }
}

#[test]
fn byte_by_byte_reads_change_nothing() {
    for r in recordings() {
        let cuts: Vec<usize> = (1..r.output.len()).collect();
        assert_eq!(
            pairs(&detect(r.cols, r.rows, &r.output, &cuts)),
            r.expected,
            "{}",
            r.name
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// Any chunking of a recorded stream yields exactly the same URLs.
    #[test]
    fn any_chunking_yields_the_same_urls(cuts in proptest::collection::vec(any::<usize>(), 0..64)) {
        for r in recordings() {
            prop_assert_eq!(pairs(&detect(r.cols, r.rows, &r.output, &cuts)), r.expected.clone(), "{}", r.name);
        }
    }
}

const CODEX_URL: &str = "https://auth.openai.com/oauth/authorize?response_type=code&client_id=app_fake&code_challenge=fake-challenge&state=fake-state-0001";

#[test]
fn osc52_clipboard_alone_is_enough() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(CODEX_URL);
    let stream = format!("press c to copy\r\n\x1b]52;c;{b64}\x07done\r\n");
    let found = detect(80, 24, stream.as_bytes(), &[]);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].url, CODEX_URL);
    assert_eq!(found[0].source, UrlSource::Clipboard);
}

#[test]
fn hyperlink_label_text_is_not_taken_for_the_url() {
    // A shortened label inside the link: the target is the URL, the label is ignored.
    let stream =
        format!("\x1b]8;;{CODEX_URL}\x1b\\https://auth.openai.com/oauth/authorize?client_id=app_fake&response_type=code…\x1b]8;;\x1b\\\r\n");
    let found = detect(200, 24, stream.as_bytes(), &[]);
    assert_eq!(
        pairs(&found),
        vec![("codex".to_owned(), CODEX_URL.to_owned())]
    );
}

#[test]
fn hard_wrap_with_indent_and_colours_is_joined() {
    // 40 columns, the CLI wraps the URL itself with a 2-space indent and colours each row.
    let width = 38;
    let rows: Vec<&str> = CODEX_URL
        .as_bytes()
        .chunks(width)
        .map(|c| std::str::from_utf8(c).expect("ascii"))
        .collect();
    let mut stream = String::from("Open this URL:\r\n");
    for row in &rows {
        stream.push_str(&format!("  \x1b[38;5;147m{row}\x1b[39m\r\n"));
    }
    stream.push_str("\r\nWaiting for authentication...\r\n");
    let found = detect(40, 24, stream.as_bytes(), &[]);
    assert_eq!(
        pairs(&found),
        vec![("codex".to_owned(), CODEX_URL.to_owned())]
    );
}

#[test]
fn soft_wrapped_url_is_joined() {
    let stream = format!("visit: {CODEX_URL}\r\nthen come back\r\n");
    let found = detect(30, 24, stream.as_bytes(), &[]);
    assert_eq!(
        pairs(&found),
        vec![("codex".to_owned(), CODEX_URL.to_owned())]
    );
}

#[test]
fn url_drawn_word_by_word_with_cursor_moves_is_found() {
    // The URL written in pieces out of order, positioned by CUP, like a diff renderer.
    let (a, b) = CODEX_URL.split_at(50);
    let stream = format!("\x1b[2J\x1b[3;51H{b}\x1b[3;1H{a}\x1b[10;1Hok\r\n");
    let found = detect(200, 24, stream.as_bytes(), &[]);
    assert_eq!(
        pairs(&found),
        vec![("codex".to_owned(), CODEX_URL.to_owned())]
    );
}

#[test]
fn plain_and_callback_urls_are_not_login_urls() {
    let stream = "Starting local login server on http://localhost:1455.\r\nDocs: https://geminicli.com/docs/resources/tos-privacy/\r\n";
    assert!(detect(100, 30, stream.as_bytes(), &[]).is_empty());
}

#[test]
fn the_same_url_twice_is_one_event_and_the_browser_shim_joins_it() {
    let stream = format!("{CODEX_URL}\r\n\x1b[2J\x1b[H{CODEX_URL}\r\n");
    let mut d = UrlDetector::new(300, 24, rules());
    assert_eq!(
        d.report_external(CODEX_URL, UrlSource::Browser)
            .map(|u| u.source),
        Some(UrlSource::Browser)
    );
    assert!(d.feed(stream.as_bytes()).is_empty());
    assert!(d.finish().is_empty());
}

#[test]
fn terminal_queries_are_answered_from_the_screen_model() {
    let mut d = UrlDetector::new(80, 24, rules());
    d.feed(b"\x1b[5;10Hx\x1b[6n\x1b[c\x1b[>c\x1b]11;?\x07\x1b]10;?\x1b\\");
    assert_eq!(
        d.take_replies(),
        b"\x1b[5;11R\x1b[?1;2c\x1b[>0;276;0c\x1b]11;rgb:0000/0000/0000\x07\x1b]10;rgb:ffff/ffff/ffff\x1b\\"
            .to_vec()
    );
    assert!(d.take_replies().is_empty(), "each answer is taken once");
}

#[test]
fn garbage_and_endless_escape_sequences_stay_bounded() {
    let mut d = UrlDetector::new(80, 24, rules());
    let mut junk = b"\x1b]8;;".to_vec();
    junk.extend(vec![b'a'; 1 << 20]);
    d.feed(&junk);
    d.feed(&[
        0x1b, b'[', 0xff, 0xfe, b'9', b'9', b'9', b'9', b'9', b'9', b'9', b'H',
    ]);
    d.feed(b"\x07\x1b]8;;\x07");
    let stream = format!("\r\n{CODEX_URL}\r\n");
    assert_eq!(d.feed(stream.as_bytes()).len(), 1);
}
