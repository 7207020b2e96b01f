"""Real time: member events from input to Optimove's answer, and the dead letters of those
that could not be delivered.

Data flows one way, one module per step: ``inputs`` (records) -> ``routing`` (targets) ->
``plan`` (one part per target; ``localize`` writes values the member's way) -> ``batching``
(parts that share a request) -> ``sender`` (the thread pool) -> ``settle`` (answers become
counts, ``journal`` entries and ``deadletter`` letters; ``summary`` holds the counts).
``push`` runs that for push-event; ``replay`` resends letters through the same settle.
``optin`` remembers consent between runs.
"""
