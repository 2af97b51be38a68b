"""mddose.diffusion"""
