"""No import circle among meshd's modules.

The graph is grimp's (the library behind import-linter): every import statement counts, those under
``if TYPE_CHECKING:`` and those inside functions too, since a circle there still ties the modules
together. ``from meshd.quic.errors import X`` is an edge to ``meshd.quic.errors`` alone (not to the
package ``meshd.quic``), as grimp and import-linter count it.
"""

from __future__ import annotations

import grimp

#: Circles known today outside meshd/quic, each owned by a step of the redesign still under way.
#: Remove one when it is gone (the test fails if a listed circle no longer exists, to keep this short).
KNOWN: set[frozenset[str]] = set()


def import_graph(package: str) -> dict[str, set[str]]:
    graph = grimp.build_graph(package, cache_dir=None)
    return {module: set(graph.find_modules_directly_imported_by(module)) for module in graph.modules}


def circles(edges: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected components with more than one module (or a module importing itself):
    Tarjan's algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: set[frozenset[str]] = set()
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work: list[tuple[str, list[str]]] = [(root, sorted(edges[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, todo = work[-1]
            if todo:
                nxt = todo.pop()
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(edges.get(nxt, ()))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1 or node in edges.get(node, ()):
                    found.add(frozenset(component))
    return found


def test_circles_finds_what_it_should() -> None:
    edges = {
        "a": {"b"},
        "b": {"c"},
        "c": {"a", "d"},
        "d": {"e"},
        "e": {"d"},
        "f": {"f"},
        "g": {"a"},
        "h": set(),
    }
    assert circles(edges) == {frozenset("abc"), frozenset("de"), frozenset("f")}
    assert circles({"a": {"b"}, "b": {"c"}, "c": set()}) == set()


def test_the_graph_sees_type_checking_and_function_level_imports() -> None:
    edges = import_graph("meshd")
    # iroh_relay/paths.py imports QuicEndpoint under TYPE_CHECKING; cli.py imports its commands inside functions.
    assert "meshd.quic.endpoint" in edges["meshd.iroh_relay.paths"]
    assert "meshd.commands.demo" in edges["meshd.cli"]


def test_no_import_circle_in_meshd_quic() -> None:
    edges = import_graph("meshd")
    quic = {m: {i for i in imported if i.startswith("meshd.quic")} for m, imported in edges.items()}
    assert circles({m: i for m, i in quic.items() if m.startswith("meshd.quic")}) == set()
    # The layering docs/lifecycles.md describes: a stream knows its connection only as a StreamOwner,
    # a connection its endpoint only as a ConnectionOwner.
    assert "meshd.quic.connection" not in edges["meshd.quic.stream"]
    assert "meshd.quic.endpoint" not in edges["meshd.quic.connection"]


def test_no_import_circle_in_meshd() -> None:
    found = circles(import_graph("meshd"))
    new = found - KNOWN
    assert not new, "import circles: " + "; ".join(" <-> ".join(sorted(c)) for c in new)
    gone = KNOWN - found
    assert not gone, "no longer circles, remove them from KNOWN: " + "; ".join(" <-> ".join(sorted(c)) for c in gone)
