"""The manager server, run in the master's own process on threads.

It is `multiprocessing.managers.Server` with three changes: it can be stopped (the stock
accepter loops forever), a failed handshake is logged with the peer's address and counted
instead of vanishing, and peers may not call `shutdown` or `debug_info`.
"""

import logging
import threading
from multiprocessing import AuthenticationError, connection, process
from multiprocessing.managers import Server
from traceback import format_exc

from procfleet.shared.errors import ConfigError
from procfleet.shared.manager import DISPATCHER, DISPATCHER_METHODS, DispatcherProxy, FleetManager
from procfleet.shared.settings import format_address
from procfleet.shared.transport import set_nodelay

log = logging.getLogger(__name__)

LISTEN_BACKLOG = 128
_peer = threading.local()


def current_peer() -> str:
    """The address of the peer whose request this server thread is serving."""
    return getattr(_peer, "address", "?")


class MasterServer(Server):
    public = ["create", "accept_connection", "get_methods", "dummy", "incref", "decref",
              "number_of_objects"]

    def __init__(self, registry, address, authkey, serializer):
        # Same state as Server.__init__ (3.11-3.13), with a larger listen backlog.
        self.registry = registry
        self.authkey = process.AuthenticationString(authkey)
        self.listener = connection.Listener(address=address, backlog=LISTEN_BACKLOG)
        self.address = self.listener.address
        self.id_to_obj = {"0": (None, ())}
        self.id_to_refcount = {}
        self.id_to_local_proxy_obj = {}
        self.mutex = threading.Lock()
        self.stop_event = threading.Event()
        self.auth_failures = 0

    def start(self) -> None:
        threading.Thread(target=self.accepter, name="accepter", daemon=True).start()

    def close(self) -> None:
        self.stop_event.set()
        try:
            self.listener.close()
        except OSError:
            pass

    def accepter(self):
        while not self.stop_event.is_set():
            try:
                conn = self.listener.accept()
            except OSError:
                if self.stop_event.is_set():
                    return
                self.stop_event.wait(0.01)  # e.g. EMFILE: do not spin
                continue
            try:
                peer = self.listener.last_accepted
            except AttributeError:   # the listener was closed under us
                conn.close()
                return
            set_nodelay(conn.fileno())
            threading.Thread(target=self.handle_request, args=(conn, peer), daemon=True).start()

    def handle_request(self, conn, peer=None):
        _peer.address = format_address(peer) if isinstance(peer, tuple) else str(peer)
        try:
            self._serve_connection(conn)
        except SystemExit:        # serve_client() exits its thread this way on EOF
            pass
        finally:
            conn.close()

    def _serve_connection(self, conn):
        try:
            connection.deliver_challenge(conn, self.authkey)
            connection.answer_challenge(conn, self.authkey)
        except AuthenticationError:
            self.auth_failures += 1
            log.warning("refused connection from %s: wrong key (authentication failure #%d)",
                        current_peer(), self.auth_failures)
            return
        except (EOFError, OSError):
            log.debug("connection from %s closed during the handshake", current_peer())
            return
        try:
            _ignore, funcname, args, kwds = conn.recv()
            if funcname not in self.public:
                raise ValueError(f"{funcname!r} is not a request this master serves")
            func = getattr(self, funcname)
        except (EOFError, OSError):
            return
        except Exception:
            msg = ("#TRACEBACK", format_exc())
        else:
            if funcname == "accept_connection":
                # It answers by itself, then serves this connection until EOF or stop.
                func(conn, *args, **kwds)
                return
            try:
                msg = ("#RETURN", func(conn, *args, **kwds))
            except Exception:
                msg = ("#TRACEBACK", format_exc())
        try:
            conn.send(msg)
        except (EOFError, OSError):
            pass


def start_server(service, address: tuple[str, int], authkey: bytes) -> MasterServer:
    """Bind, register the dispatcher service and start accepting; ConfigError if the port is taken."""

    class MasterManager(FleetManager):
        pass

    # A closure is fine here: this manager is never start()ed, so its registry is never pickled.
    MasterManager.register(DISPATCHER, callable=lambda: service, proxytype=DispatcherProxy,
                           exposed=DISPATCHER_METHODS, create_method=False)
    try:
        server = MasterServer(MasterManager._registry, address, authkey, "pickle")
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {format_address(address)}: {exc.strerror or exc}; "
            "choose another address with --bind or PROCFLEET_BIND"
        ) from None
    server.start()
    return server
