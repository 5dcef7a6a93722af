//! `agentctl`: drive a VM agent from the command line. One JSON object per output line; the exit
//! code of `exec` is agentctl's exit code.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use orchestrator::client::StreamItem;
use orchestrator::transport::{connector_from_uri, hello_listener_path};
use orchestrator::{AgentClient, HelloListener};
use protocol::frame::FrameKind;
use protocol::messages::{ConfigureRequest, ExecEvent, ExecRequest, WriteFileRequest};
use protocol::secret::EnvVars;
use serde_json::json;
use tokio::io::AsyncReadExt;

mod creds;
mod pty;

#[derive(Parser)]
#[command(name = "agentctl", version, about = "Talk to a VM agent")]
struct Cli {
    /// Agent address: unix:/path, vsock:CID:PORT or hvsock:/path/to/uds:PORT.
    #[arg(long, global = true)]
    connect: Option<String>,
    /// Seconds to keep trying to connect.
    #[arg(long, global = true, default_value_t = 10)]
    connect_timeout: u64,
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// The agent's greeting (version, protocol, capabilities, boot id).
    Hello,
    /// Liveness.
    Health,
    /// Resource usage.
    Stats,
    /// Power the VM off (only an agent running as the VM's init accepts).
    Poweroff,
    /// Environment for everything the agent spawns from now on.
    Configure {
        /// NAME=VALUE to set (repeatable).
        #[arg(long = "env", value_parser = parse_kv)]
        env: Vec<(String, String)>,
        /// NAME to remove (repeatable).
        #[arg(long)]
        unset: Vec<String>,
        /// Replace the configured environment instead of merging.
        #[arg(long)]
        replace: bool,
        /// Login session id.
        #[arg(long)]
        session_id: Option<String>,
    },
    /// Run a process in the guest.
    Exec {
        /// Forward this process's stdin.
        #[arg(long)]
        stdin: bool,
        /// Pass output bytes through unchanged instead of JSON lines.
        #[arg(long)]
        raw: bool,
        /// NAME=VALUE for this process only (repeatable).
        #[arg(long = "env", value_parser = parse_kv)]
        env: Vec<(String, String)>,
        /// Working directory.
        #[arg(long)]
        cwd: Option<String>,
        /// The guest user to run as (default: the image's unprivileged user).
        #[arg(long)]
        user: Option<String>,
        /// Program and arguments.
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
    /// Read a whole file from the guest.
    ReadFile {
        /// Absolute guest path.
        path: String,
        /// Write the content to stdout instead of a JSON line.
        #[arg(long)]
        raw: bool,
    },
    /// Write a whole file in the guest (atomically).
    WriteFile {
        /// Absolute guest path.
        path: String,
        /// Local file to send (default: stdin).
        #[arg(long)]
        from: Option<PathBuf>,
        /// Octal permission bits.
        #[arg(long, value_parser = parse_mode)]
        mode: Option<u32>,
        /// Create missing parent directories.
        #[arg(long)]
        create_dirs: bool,
    },
    /// Run a program on a PTY: JSON lines of output, login URLs and exit; or `--interactive`.
    Pty(pty::PtyArgs),
    /// Provider credential files in the guest: watch, put, wipe.
    Creds {
        #[command(subcommand)]
        cmd: creds::CredsCommand,
    },
    /// The VM desktop over WebRTC.
    Desktop {
        #[command(subcommand)]
        action: DesktopVerb,
    },
    /// Wait for an agent's hello and print it.
    WaitHello {
        /// unix:/path or hvsock:/path/to/uds:PORT (listens on /path/to/uds_PORT).
        #[arg(long)]
        listen: String,
        /// Seconds to wait.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
}

#[derive(Subcommand)]
enum DesktopVerb {
    /// Read an SDP offer on stdin; print the answer, then the session's events (candidates,
    /// connected, control, closed) as JSON lines. The viewer watches until agentctl is stopped.
    Offer {
        /// X display (default: the agent's).
        #[arg(long)]
        display: Option<String>,
        /// Highest frame rate.
        #[arg(long)]
        fps: Option<u32>,
        /// Target bitrate, kbit/s.
        #[arg(long)]
        bitrate_kbps: Option<u32>,
        /// Local address to offer a host candidate on (repeatable; default: every interface).
        #[arg(long)]
        bind: Vec<std::net::IpAddr>,
        /// Public address mapped 1:1 onto the VM.
        #[arg(long)]
        nat_1to1_ip: Option<std::net::IpAddr>,
        /// UDP port range LOW-HIGH for the media socket.
        #[arg(long, value_parser = parse_range)]
        udp_ports: Option<(u16, u16)>,
        /// STUN server URL (`stun:host:port`, repeatable): its view of the agent is trickled.
        #[arg(long)]
        stun: Vec<String>,
    },
}

fn parse_range(s: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = s
        .split_once('-')
        .ok_or_else(|| format!("expected LOW-HIGH, got {s:?}"))?;
    let lo: u16 = lo.parse().map_err(|e| format!("bad port {lo:?}: {e}"))?;
    let hi: u16 = hi.parse().map_err(|e| format!("bad port {hi:?}: {e}"))?;
    if lo > hi {
        return Err(format!("empty range {s:?}"));
    }
    Ok((lo, hi))
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8).map_err(|e| format!("bad mode {s:?}: {e}"))
}

fn emit(value: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Client(#[from] orchestrator::ClientError),
    #[error(transparent)]
    Creds(#[from] creds::CredsCommandError),
    #[error(transparent)]
    Pty(#[from] pty::PtyCommandError),
    #[error(transparent)]
    Transport(#[from] orchestrator::TransportError),
    #[error(transparent)]
    Uri(#[from] orchestrator::transport::UriError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AGENTCTL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("agentctl: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    if let Verb::WaitHello { listen, timeout } = &cli.verb {
        let listener = HelloListener::bind(hello_listener_path(listen)?)?;
        let hello = listener.wait(Duration::from_secs(*timeout)).await?;
        emit(json!(hello));
        return Ok(ExitCode::SUCCESS);
    }
    let uri = cli
        .connect
        .ok_or_else(|| CliError::Usage("--connect URI is required".into()))?;
    let connector = connector_from_uri(&uri)?;
    let client =
        AgentClient::connect_with_retry(&*connector, Duration::from_secs(cli.connect_timeout))
            .await?;
    match cli.verb {
        Verb::Hello => emit(json!(client.hello().await?)),
        Verb::Health => emit(json!(client.health().await?)),
        Verb::Stats => emit(json!(client.stats().await?)),
        Verb::Poweroff => emit(json!(client.poweroff().await?)),
        Verb::Configure {
            env,
            unset,
            replace,
            session_id,
        } => {
            let req = ConfigureRequest {
                env: EnvVars::from_pairs(env),
                unset,
                replace,
                session_id,
            };
            emit(json!(client.configure(&req).await?));
        }
        Verb::Exec {
            stdin,
            raw,
            env,
            cwd,
            user,
            argv,
        } => {
            let req = ExecRequest {
                argv,
                env: EnvVars::from_pairs(env),
                cwd,
                stdin,
                user,
            };
            return exec(&client, req, raw).await;
        }
        Verb::ReadFile { path, raw } => {
            let file = client.read_file(&path).await?;
            if raw {
                std::io::stdout().write_all(&file.content)?;
            } else {
                emit(json!({
                    "path": path,
                    "size": file.content.len(),
                    "mode": format!("{:o}", file.mode),
                    "content_base64": base64::engine::general_purpose::STANDARD.encode(&file.content),
                }));
            }
        }
        Verb::WriteFile {
            path,
            from,
            mode,
            create_dirs,
        } => {
            let content = match from {
                Some(p) => std::fs::read(p)?,
                None => {
                    let mut buf = Vec::new();
                    std::io::stdin().read_to_end(&mut buf)?;
                    buf
                }
            };
            let res = client
                .write_file(&WriteFileRequest {
                    path: path.clone(),
                    content,
                    mode,
                    create_dirs,
                })
                .await?;
            emit(json!({"path": path, "bytes": res.bytes}));
        }
        Verb::Creds { cmd } => cmd.run(&client, &mut emit).await?,
        Verb::Pty(args) => {
            let code = args.run(&client, &mut emit).await?;
            return Ok(ExitCode::from(
                u8::try_from(code.clamp(0, 255)).unwrap_or(255),
            ));
        }
        Verb::Desktop {
            action:
                DesktopVerb::Offer {
                    display,
                    fps,
                    bitrate_kbps,
                    bind,
                    nat_1to1_ip,
                    udp_ports,
                    stun,
                },
        } => {
            let mut sdp = String::new();
            std::io::stdin().read_to_string(&mut sdp)?;
            let offer = protocol::desktop::DesktopOffer {
                sdp,
                display,
                video: protocol::desktop::VideoSettings { fps, bitrate_kbps },
                ice: protocol::desktop::IceSettings {
                    servers: stun
                        .into_iter()
                        .map(|url| protocol::desktop::IceServer {
                            urls: vec![url],
                            ..Default::default()
                        })
                        .collect(),
                    bind,
                    nat_1to1_ip,
                    udp_ports,
                },
            };
            let mut session = client.desktop(&offer).await?;
            emit(json!({"event": "answer", "sdp": session.answer()}));
            while let Some(event) = session.next_event().await? {
                emit(json!(event));
            }
        }
        Verb::WaitHello { .. } => unreachable!("handled above"),
    }
    Ok(ExitCode::SUCCESS)
}

async fn exec(client: &AgentClient, req: ExecRequest, raw: bool) -> Result<ExitCode, CliError> {
    let forward_stdin = req.stdin;
    let mut call = client.exec(&req).await?;
    if forward_stdin {
        if let Some(input) = call.input() {
            tokio::spawn(async move {
                let mut stdin = tokio::io::stdin();
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = stdin.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let frame = protocol::frame::Frame::data(
                        FrameKind::Stdin,
                        Bytes::copy_from_slice(&buf[..n]),
                    );
                    if input.send(frame).await.is_err() {
                        break;
                    }
                }
            });
        }
    }
    call.close_input();
    let mut code = 255;
    while let Some(item) = call.next().await? {
        match item {
            StreamItem::Data(kind, bytes) if raw => {
                if kind == FrameKind::Stderr {
                    std::io::stderr().write_all(&bytes)?;
                } else {
                    std::io::stdout().write_all(&bytes)?;
                }
            }
            StreamItem::Data(kind, bytes) => {
                let stream = if kind == FrameKind::Stderr {
                    "stderr"
                } else {
                    "stdout"
                };
                match std::str::from_utf8(&bytes) {
                    Ok(text) => emit(json!({"event": "output", "stream": stream, "text": text})),
                    Err(_) => emit(json!({
                        "event": "output",
                        "stream": stream,
                        "base64": base64::engine::general_purpose::STANDARD.encode(&bytes),
                    })),
                }
            }
            StreamItem::Event(event) => {
                if let ExecEvent::Exited(status) = &event {
                    code = status.shell_code();
                }
                if !raw {
                    emit(json!(event));
                }
            }
        }
    }
    std::io::stdout().flush()?;
    Ok(ExitCode::from(
        u8::try_from(code.clamp(0, 255)).unwrap_or(255),
    ))
}
