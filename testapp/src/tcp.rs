//! TCP peers: echo, and server-first (a banner before anything is read, like MySQL or SMTP).

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// Echoes every byte back; half-closes its side when the client does.
pub async fn serve_echo(listener: TcpListener) -> std::io::Result<()> {
    loop {
        let (mut stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let (mut r, mut w) = stream.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.shutdown().await;
        });
    }
}

/// Writes `banner` as soon as a connection is accepted, then echoes.
pub async fn serve_server_first(listener: TcpListener, banner: String) -> std::io::Result<()> {
    loop {
        let (mut stream, _) = listener.accept().await?;
        let banner = banner.clone();
        tokio::spawn(async move {
            if stream.write_all(banner.as_bytes()).await.is_err() {
                return;
            }
            let (mut r, mut w) = stream.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.shutdown().await;
        });
    }
}
