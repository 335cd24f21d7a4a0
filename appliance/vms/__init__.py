"""VMs the appliance runs itself: definitions in the catalog, vmm/ runs them.
"""
