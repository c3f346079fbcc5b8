"""The flashing station: plan a card from a base and a unit, refuse unsafe targets, write only
what the filesystems need, read the card back, verify it, and record every attempt in a ledger."""
