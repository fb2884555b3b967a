//! [`IdleTimeout`]: a response body that ends in an error when the target sends nothing for
//! too long (ALB's idle timeout), so a target that stalls in the middle of a body cannot hold a
//! client forever. A stream that keeps sending (server-sent events with keep-alive comments)
//! lives as long as it likes.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// Why a body was cut.
#[derive(Debug, thiserror::Error)]
#[error("the target sent nothing for {0:?}")]
pub(crate) struct IdleError(Duration);

/// A target's response body with an idle timeout.
pub(crate) struct IdleTimeout {
    /// The body as it comes from the target.
    inner: Incoming,
    /// The longest silence allowed.
    idle: Duration,
    /// Fires `idle` after the last frame; reset by every frame.
    timer: Pin<Box<Sleep>>,
}

impl IdleTimeout {
    pub fn new(inner: Incoming, idle: Duration) -> IdleTimeout {
        IdleTimeout {
            inner,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

impl Body for IdleTimeout {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if frame.is_some() {
                    let next = Instant::now() + this.idle;
                    this.timer.as_mut().reset(next);
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(IdleError(this.idle).into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
