"""Running the appliance as a server: HTTPS (a self-signed certificate made on first start).
"""
