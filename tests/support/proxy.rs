//! A small TCP proxy in front of a real server, for faults the servers cannot be asked to make:
//! not listening yet (connection refused), forwarding with a delay, accepting but never answering
//! (a black hole), going down mid-run (every open connection cut, new ones refused), and open
//! connections going silent while new ones work (a load balancer that dropped a flow's state), and
//! an HTTP front that answers 503 for some paths (a proxy or gateway in front of the management API
//! whose upstream timed out on one endpoint, as a slow listing of a big vhost makes it).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

pub struct Proxy {
    pub addr: SocketAddr,
    target: SocketAddr,
    server: Mutex<Option<JoinHandle<()>>>,
    /// Connections numbered below this forward nothing more, without closing.
    frozen_below: Arc<std::sync::atomic::AtomicU64>,
}

/// What a request picked out by [`Proxy::forward_failing`] or [`Proxy::forward_hanging`] gets.
#[derive(Clone, Copy)]
enum HttpFault {
    /// 503 Service Unavailable.
    Unavailable,
    /// No answer, ever (the connection stays open).
    Hang,
}

#[derive(Clone)]
enum Behaviour {
    Forward(Duration),
    BlackHole,
    /// HTTP: requests whose request line contains one of these get the fault; the others are
    /// forwarded, one request per connection (`Connection: close` added), so each is seen.
    FailPaths(Arc<Vec<String>>, HttpFault),
}

impl Proxy {
    /// A proxy for `target` that is not listening yet: connections are refused.
    pub fn new(target: SocketAddr) -> Proxy {
        Proxy {
            addr: SocketAddr::from(([127, 0, 0, 1], super::free_port())),
            target,
            server: Mutex::new(None),
            frozen_below: Arc::default(),
        }
    }

    /// A proxy for the host:port of an http(s) URL.
    pub fn for_url(url: &str) -> Proxy {
        let host_port = url.split("://").nth(1).unwrap().trim_end_matches('/');
        let target = std::net::ToSocketAddrs::to_socket_addrs(host_port).unwrap().next().unwrap();
        Proxy::new(target)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Starts forwarding, delaying every chunk by `delay`.
    pub fn forward(&self, delay: Duration) {
        self.listen(Behaviour::Forward(delay));
    }

    /// Forwards HTTP requests, but answers 503 Service Unavailable (as nginx or an ingress does when
    /// its upstream timed out) to every request whose request line contains one of `parts`.
    pub fn forward_failing(&self, parts: &[&str]) {
        self.listen(Behaviour::FailPaths(
            Arc::new(parts.iter().map(|p| p.to_string()).collect()),
            HttpFault::Unavailable,
        ));
    }

    /// Forwards HTTP requests, but never answers those whose request line contains one of `parts`
    /// (a broker that takes a purge and never finishes it).
    pub fn forward_hanging(&self, parts: &[&str]) {
        self.listen(Behaviour::FailPaths(Arc::new(parts.iter().map(|p| p.to_string()).collect()), HttpFault::Hang));
    }

    /// Accepts connections and never answers.
    pub fn black_hole(&self) {
        self.listen(Behaviour::BlackHole);
    }

    /// Every connection open now stops forwarding, in both directions, without being closed: no
    /// FIN, no RST, as when a load balancer or NAT forgets a flow. New connections work.
    pub fn silence_open_connections(&self) {
        self.frozen_below.store(u64::MAX, std::sync::atomic::Ordering::SeqCst);
    }

    /// Stops listening and cuts every open connection.
    pub fn down(&self) {
        if let Some(server) = self.server.lock().unwrap().take() {
            server.abort();
        }
    }

    fn listen(&self, behaviour: Behaviour) {
        self.down();
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(self.addr).expect("proxy port free");
        let listener = socket.listen(128).unwrap();
        let target = self.target;
        let frozen_below = self.frozen_below.clone();
        let server = tokio::spawn(async move {
            // Dropping the set (when this task is aborted) aborts and closes every connection.
            let connections = Arc::new(Mutex::new(JoinSet::new()));
            let mut number = 0u64;
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                number += 1;
                // A silence applies to the connections open when it was asked for, not later ones.
                let _ = frozen_below.compare_exchange(
                    u64::MAX,
                    number,
                    std::sync::atomic::Ordering::SeqCst,
                    std::sync::atomic::Ordering::SeqCst,
                );
                let silenced = Silence { number, frozen_below: frozen_below.clone() };
                let behaviour = behaviour.clone();
                let connection = async move {
                    match behaviour {
                        Behaviour::FailPaths(parts, fault) => http_failing(client, target, &parts, fault).await,
                        Behaviour::BlackHole => {
                            let _held = client;
                            std::future::pending::<()>().await;
                        }
                        Behaviour::Forward(delay) => {
                            let Ok(server) = TcpStream::connect(target).await else { return };
                            let (client_read, client_write) = client.into_split();
                            let (server_read, server_write) = server.into_split();
                            tokio::join!(
                                pipe(client_read, server_write, delay, silenced.clone()),
                                pipe(server_read, client_write, delay, silenced)
                            );
                        }
                    }
                };
                connections.lock().unwrap().spawn(connection);
            }
        });
        *self.server.lock().unwrap() = Some(server);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.down();
    }
}

/// Whether a connection has been silenced.
#[derive(Clone)]
struct Silence {
    number: u64,
    frozen_below: Arc<std::sync::atomic::AtomicU64>,
}

impl Silence {
    fn is_silenced(&self) -> bool {
        self.number < self.frozen_below.load(std::sync::atomic::Ordering::SeqCst)
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    silence: Silence,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = tokio::time::timeout(Duration::from_millis(100), from.read(&mut buffer)).await;
        if silence.is_silenced() {
            // Hold both halves open and forward nothing, for ever.
            let _held = (from, to);
            std::future::pending::<()>().await;
            return;
        }
        let n = match read {
            Err(_) => continue,
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => n,
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// One HTTP request: given `fault` when its request line contains one of `parts`, else forwarded
/// with `Connection: close` and the answer passed back.
async fn http_failing(mut client: TcpStream, target: SocketAddr, parts: &[String], fault: HttpFault) {
    let mut head = Vec::new();
    let mut buffer = [0u8; 4096];
    let end = loop {
        let Ok(n) = client.read(&mut buffer).await else { return };
        if n == 0 {
            return;
        }
        head.extend_from_slice(&buffer[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
    };
    let line_end = head.iter().position(|b| *b == b'\r').unwrap_or(end);
    let request_line = String::from_utf8_lossy(&head[..line_end]).to_string();
    if parts.iter().any(|part| request_line.contains(part.as_str())) {
        if let HttpFault::Hang = fault {
            // Held open, never answered.
            std::future::pending::<()>().await;
        }
        let body = r#"{"error":"service_unavailable","reason":"upstream timed out"}"#;
        let answer = format!(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = client.write_all(answer.as_bytes()).await;
        return;
    }
    let Ok(mut server) = TcpStream::connect(target).await else { return };
    let mut forwarded = head[..line_end + 2].to_vec();
    forwarded.extend_from_slice(b"Connection: close\r\n");
    forwarded.extend_from_slice(&head[line_end + 2..]);
    if server.write_all(&forwarded).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}
