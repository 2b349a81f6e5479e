"""Storage: the SQLite catalog (source of truth), the derived FAISS index, the writer lock."""
