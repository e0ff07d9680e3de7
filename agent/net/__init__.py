"""Node networking: Linux bridges (pyroute2) and one DHCP-only dnsmasq per bridge."""
