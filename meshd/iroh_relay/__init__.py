"""The iroh relay path: codec (:mod:`.frames`), client (:mod:`.client`), QUIC paths (:mod:`.paths`), server."""
