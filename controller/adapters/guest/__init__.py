"""A VM's control channel (virtio-serial, served in the guest by the image's warmvm-agent): its frames
(frames, pure) and the host's end (client): a session, the guest's status, a command."""

from .client import (
    OUTPUT_LIMIT,
    Channel,
    ChannelTimeout,
    NotListening,
    OutputLimit,
    StatusWatch,
    open_session,
    run,
)
from .frames import ChannelError, ProtocolError, Status

__all__ = ["OUTPUT_LIMIT", "Channel", "ChannelError", "ChannelTimeout", "NotListening", "OutputLimit", "ProtocolError",
           "Status", "StatusWatch", "open_session", "run"]
