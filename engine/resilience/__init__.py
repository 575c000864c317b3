"""What keeps model calls alive: retries, circuit breakers, token gates, rate limits."""
