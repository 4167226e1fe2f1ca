"""The web portal (seed: "Web Portal Integration"): REST API, JWT, Socket.IO, dashboard."""
