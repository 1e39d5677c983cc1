"""The node's runtime services, composed by `broker.Broker` around one state object
(`state.Runtime`): access control, placement, definition changes and their mirror, the
vhosts' stores and this node's role for each vhost.  The management plane and `warren`
sit above it; the clients' code below reaches it only through the Protocols it names."""
