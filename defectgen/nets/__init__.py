"""Networks (torch): mapping, synthesis with a mask head, encoder, discriminator. Export-ready by construction."""
